"""Offline weights in timm's formats; the train / eval / predict / vtab commands and config layering."""
import json

import numpy as np
import pytest
import timm
import torch
from data_files import make_folder, make_vtab_task
from safetensors.torch import save_file

import sparse_tuning.hosts.timm_models  # noqa: F401  (registers the small ViTs with timm)
from sparse_tuning.cli import main
from sparse_tuning.training.config import resolve_config
from sparse_tuning.training.run import build_model
from sparse_tuning.tools.vtab import vtab_table

MODEL = "st_vit_micro_patch4_32"


def source_model():
    torch.manual_seed(123)
    return timm.create_model(MODEL, num_classes=1000)


def write_google_npz(model, path):
    """The original ViT .npz layout (as timm's _load_weights reads it), from a timm model."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    D, H = model.embed_dim, model.blocks[0].attn.num_heads
    w = {"embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
         "embedding/bias": sd["patch_embed.proj.bias"], "cls": sd["cls_token"],
         "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
         "Transformer/encoder_norm/scale": sd["norm.weight"], "Transformer/encoder_norm/bias": sd["norm.bias"],
         "head/kernel": sd["head.weight"].T, "head/bias": sd["head.bias"]}
    for i in range(len(model.blocks)):
        b, p = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        qkv_w, qkv_b = sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]
        for j, n in enumerate(("query", "key", "value")):
            w[f"{p}MultiHeadDotProductAttention_1/{n}/kernel"] = qkv_w[j * D:(j + 1) * D].T.reshape(D, H, D // H)
            w[f"{p}MultiHeadDotProductAttention_1/{n}/bias"] = qkv_b[j * D:(j + 1) * D].reshape(H, D // H)
        w[f"{p}MultiHeadDotProductAttention_1/out/kernel"] = sd[b + "attn.proj.weight"].reshape(D, H, D // H).transpose(1, 2, 0)
        w[f"{p}MultiHeadDotProductAttention_1/out/bias"] = sd[b + "attn.proj.bias"]
        for ln, name in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            w[f"{p}{ln}/scale"], w[f"{p}{ln}/bias"] = sd[b + name + ".weight"], sd[b + name + ".bias"]
        for r in range(2):
            w[f"{p}MlpBlock_3/Dense_{r}/kernel"] = sd[b + f"mlp.fc{r + 1}.weight"].T
            w[f"{p}MlpBlock_3/Dense_{r}/bias"] = sd[b + f"mlp.fc{r + 1}.bias"]
    np.savez(path, **w)


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "npz"])
def test_local_weights_load_into_the_backbone(tmp_path, fmt):
    src = source_model()
    path = tmp_path / f"weights.{fmt}"
    if fmt == "safetensors":
        save_file(src.state_dict(), str(path))
    elif fmt == "pth":
        torch.save(src.state_dict(), path)
    else:
        write_google_npz(src, path)
    cfg = resolve_config({"model": MODEL, "weights": str(path)})
    model = build_model(cfg, num_classes=5)
    mine = model.state_dict()
    for k, v in src.state_dict().items():
        if not k.startswith("head."):
            assert torch.allclose(mine[k], v, atol=1e-6), k
    assert model.head.weight.shape == (5, 64)


def test_weights_of_another_model_are_refused(tmp_path):
    other = timm.create_model(MODEL, embed_dim=32, num_heads=2)
    save_file(other.state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="does not fit this model"):
        build_model(resolve_config({"model": MODEL, "weights": str(tmp_path / "w.safetensors")}), 5)


def test_config_file_flags_and_presets_layer_in_order(tmp_path):
    (tmp_path / "c.yaml").write_text("model: st_vit_micro_patch4_32\npreset: vtab\ntrain:\n  epochs: 7\n"
                                     "sparse_tuning:\n  keep-rate: 0.5\n")
    from sparse_tuning.cli.options import option_layers as _layers
    from sparse_tuning.cli import make_parser
    args = make_parser().parse_args(["train", "--config", str(tmp_path / "c.yaml"), "--epochs", "3",
                                     "--fusion", "up-sum", "--sparsify-at", "2,5"])
    cfg = resolve_config(*_layers(args))
    assert cfg.train.epochs == 3                         # flag over file
    assert cfg.train.lr == 1e-2                          # preset under both
    assert cfg.sparse_tuning.bottleneck == 8             # preset
    assert cfg.sparse_tuning.keep_rate == 0.5            # file
    assert cfg.sparse_tuning.fusion == "up-sum" and cfg.sparse_tuning.sparsify_at == (2, 5)
    # A flat file is the same as a nested one: each key finds its section.
    flat = resolve_config({"epochs": 3, "keep_rate": 0.5, "lora_rank": 4, "frames": 0})
    assert flat == resolve_config({"train": {"epochs": 3}, "sparse_tuning": {"keep_rate": 0.5},
                                   "baseline": {"lora_rank": 4}})
    assert flat.train.epochs == 3 and flat.baseline["lora_rank"] == 4
    with pytest.raises(ValueError, match="did you mean 'epochs'"):
        resolve_config({"epoch": 3})
    with pytest.raises(ValueError, match="did you mean 'model'"):
        resolve_config({"modle": "x"})
    with pytest.raises(ValueError, match="'epoch' under train:; did you mean 'epochs'"):
        resolve_config({"train": {"epoch": 3}})


def test_train_eval_predict_commands(tmp_path, capsys):
    folder = make_folder(tmp_path / "ds", classes=3, train=8, val=2)
    run = tmp_path / "run"
    assert main(["train", "--model", MODEL, "--no-pretrained", "--data", f"folder:{folder}", "--out", str(run),
                 "--epochs", "2", "--batch-size", "8", "--lr", "0.003", "--num-workers", "0"]) == 0
    assert "best top-1" in capsys.readouterr().out
    assert main(["eval", "--run", str(run), "--keep-rate", "0.5"]) == 0
    result = json.loads((run / "eval-val-keep0.5.json").read_text())
    assert result["keep_rate"] == 0.5 and result["images"] == 6 and 0 <= result["top1"] <= 100
    capsys.readouterr()
    image = folder / "val" / "class_2" / "0.png"
    assert main(["predict", "--run", str(run), str(image), "--top-k", "2", "--output", str(tmp_path / "p.json")]) == 0
    preds = json.loads((tmp_path / "p.json").read_text())
    assert preds[0]["image"] == str(image) and len(preds[0]["top"]) == 2
    assert preds[0]["top"][0]["label"] in ("class_0", "class_1", "class_2")
    assert main(["train", "--model", MODEL, "--data", f"folder:{folder}", "--out", str(run)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["predict", "--run", str(run), str(tmp_path / "missing.png")]) == 2


def test_vtab_command_table(tmp_path, capsys):
    root = tmp_path / "vtab"
    for task in ("cifar", "dtd", "eurosat"):
        make_vtab_task(root / task, classes=2, train=4, test=2)
    assert main(["vtab", "--root", str(root), "--out", str(tmp_path / "out"), "--tasks", "cifar,dtd,eurosat",
                 "--model", MODEL, "--no-pretrained", "--epochs", "1", "--batch-size", "8", "--num-workers", "0",
                 "--warmup-epochs", "0"]) == 0
    summary = json.loads((tmp_path / "out" / "vtab.json").read_text())
    assert set(summary["tasks"]) == {"cifar", "dtd", "eurosat"}
    assert json.loads((tmp_path / "out" / "dtd" / "config.json").read_text())["sparse_tuning"]["bottleneck"] == 8
    assert "mean of group means" in (tmp_path / "out" / "vtab.md").read_text()
    assert main(["vtab", "--root", str(root), "--out", str(tmp_path / "o2"), "--tasks", "imagenet"]) == 2


def test_vtab_table_means_by_hand():
    results = {"cifar": {"best": 70.0, "final": 60.0}, "dtd": {"best": 50.0, "final": 50.0},
               "eurosat": {"best": 90.0, "final": 80.0}, "dmlab": {"best": 40.0, "final": 30.0}}
    table, summary = vtab_table(results)
    assert summary["groups"]["Natural"]["best"] == 60.0 and summary["groups"]["Natural"]["complete"] is False
    assert summary["mean_of_group_means"]["best"] == pytest.approx((60 + 90 + 40) / 3)
    assert summary["mean_of_group_means"]["final"] == pytest.approx((55 + 80 + 30) / 3)
    assert "best = highest test top-1" in table
