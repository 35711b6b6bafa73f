"""Deployment formats round-trip: the exported model computes what the PyTorch model computes."""
import warnings

import numpy as np
import pytest
import torch
from data_files import make_folder
from PIL import Image

import sparse_tuning as st
from sparse_tuning.cli import main
from sparse_tuning.training.run import load_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    folder = make_folder(tmp / "ds", classes=3, train=4, val=2)
    out = tmp / "run"
    assert main(["train", "--model", "st_vit_micro_patch4_32", "--no-pretrained", "--data", f"folder:{folder}",
                 "--out", str(out), "--epochs", "1", "--batch-size", "4", "--num-workers", "0", "--lr", "0.01"]) == 0
    return out, folder


def reference(run_dir, x, keep_rate=None):
    model, _ = load_run(run_dir, keep_rate)
    with torch.no_grad():
        return model(x)


def assert_onnx_matches_the_run(run_dir, path, batches):
    """Export the run to ONNX and compare onnxruntime's logits with the run's at each batch size."""
    ort = pytest.importorskip("onnxruntime")
    assert main(["export", "--run", str(run_dir), "--format", "onnx", "--out", str(path)]) == 0
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in batches:
        x = torch.randn(batch, 3, 32, 32)
        (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        assert np.allclose(logits, reference(run_dir, x).numpy(), atol=1e-4)


def test_onnx_matches_pytorch_with_a_dynamic_batch(run, tmp_path):
    assert_onnx_matches_the_run(run[0], tmp_path / "m.onnx", (1, 5))


@pytest.mark.parametrize("fmt,load", [("torchscript", torch.jit.load),
                                      ("export", lambda p: torch.export.load(p).module())])
def test_torch_formats_match(run, tmp_path, fmt, load):
    run_dir, _ = run
    path = tmp_path / f"m.{fmt}"
    with warnings.catch_warnings(record=True) as caught:  # PyTorch's TorchScript deprecation: not the user's
        warnings.simplefilter("always")
        assert main(["export", "--run", str(run_dir), "--format", fmt, "--out", str(path)]) == 0
    assert not [w for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))], \
        [str(w.message) for w in caught]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(load(str(path))(x), reference(run_dir, x), atol=1e-5)


def test_safetensors_model_file_loads_alone(run, tmp_path):
    run_dir, _ = run
    path = tmp_path / "model.safetensors"
    assert main(["export", "--run", str(run_dir), "--format", "safetensors", "--out", str(path),
                 "--keep-rate", "0.5"]) == 0
    model = st.load_model(path)
    assert model.sparse_tuning.keep_rate == 0.5
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), reference(run_dir, x, keep_rate=0.5))
    with pytest.raises(ValueError, match="not a Sparse-Tuning model file"):
        st.load_model(run_dir / "trainable.safetensors")


def test_lora_exports_merged(tmp_path, run):
    _, folder = run
    out = tmp_path / "lora"
    assert main(["train", "--model", "st_vit_micro_patch4_32", "--no-pretrained", "--data", f"folder:{folder}",
                 "--out", str(out), "--method", "lora", "--epochs", "1", "--batch-size", "4",
                 "--num-workers", "0"]) == 0
    assert main(["export", "--run", str(out), "--format", "safetensors", "--out", str(tmp_path / "l.safetensors")]) == 0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(st.load_model(tmp_path / "l.safetensors")(x), reference(out, x), atol=1e-5)


def test_visualize(run, tmp_path):
    run_dir, folder = run
    images = [str(folder / "val" / "class_0" / "0.png"), str(folder / "val" / "class_2" / "1.png")]
    assert main(["visualize", "--run", str(run_dir), *images, "--out", str(tmp_path)]) == 0
    with Image.open(tmp_path / "kept_tokens.png") as img:
        assert img.width > img.height > 200  # four columns (input, three steps), two rows
    # a folder reads as its images, as predict reads it: class_1's two, two rows as above
    assert main(["visualize", "--run", str(run_dir), str(folder / "val" / "class_1"), "--out", str(tmp_path / "f")]) == 0
    with Image.open(tmp_path / "f" / "kept_tokens.png") as img, Image.open(tmp_path / "kept_tokens.png") as two:
        assert img.size == two.size


def test_step_titles_count_tokens_as_by_hand():
    from conftest import tiny_vit
    from sparse_tuning.tools.visualize import step_titles

    model = st.apply(tiny_vit())
    model(torch.randn(1, 3, 32, 32))
    # 64 patches; ceil(0.7 * 64) = 45 kept + 1 fused; ceil(0.7 * 46) = 33 + 1; ceil(0.7 * 34) = 24 + 1
    # blocks counted from 0, as the config's sparsify_at (3, 6, 9)
    assert model.sparse_tuning.sparsify_at == (3, 6, 9)
    assert step_titles(model) == ["block 3:\n64 -> 45+1 tokens", "block 6:\n46 -> 33+1 tokens",
                                  "block 9:\n34 -> 24+1 tokens"]


def test_images_of_the_same_name_in_two_folders_get_distinct_labels(tmp_path):
    from sparse_tuning.tools.visualize import distinct_labels

    assert distinct_labels([tmp_path / "a" / "0.png", tmp_path / "b" / "1.png"]) == ["0.png", "1.png"]
    assert distinct_labels([tmp_path / "cats" / "0.png", tmp_path / "dogs" / "0.png", tmp_path / "dogs" / "x" / "0.png"]) \
        == ["cats/0.png", "dogs/0.png", "dogs/x/0.png"]


def test_visualize_a_pretrained_backbone_without_a_run(tmp_path, capsys):
    """--model/--weights: the backbone with token sparsification, nothing trained; the kept tokens
    are those of the same weights patched by hand, at the size asked for."""
    import timm
    from safetensors.torch import save_file

    from sparse_tuning.tools.visualize import run_and_mask

    torch.manual_seed(3)
    backbone = timm.create_model("st_vit_micro_patch4_32", num_classes=0)
    save_file(backbone.state_dict(), str(tmp_path / "w.safetensors"))
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(photo)
    assert main(["visualize", "--model", "st_vit_micro_patch4_32", "--weights", str(tmp_path / "w.safetensors"),
                 "--img-size", "48", "--keep-rate", "0.5", str(photo), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "kept_tokens.png").is_file()

    from sparse_tuning.training.run import pretrained_with_sparsification
    from sparse_tuning.data.images import make_transforms, rgb_loader

    model = pretrained_with_sparsification("st_vit_micro_patch4_32", str(tmp_path / "w.safetensors"), 48, 0.5)
    assert model.patch_embed.img_size == (48, 48) and model.sparse_tuning.keep_rate == 0.5
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".adapter." in n)
    by_hand = timm.create_model("st_vit_micro_patch4_32", num_classes=0, img_size=48)
    from sparse_tuning.hosts import host_for
    host_for(by_hand).load_weights(by_hand, tmp_path / "w.safetensors")
    st.apply(by_hand, st.SparseTuningConfig(keep_rate=0.5, adapters=False))
    x = make_transforms(model, "full")[1](rgb_loader(photo)).unsqueeze(0)
    assert x.shape == (1, 3, 48, 48)
    assert (run_and_mask(model, x) == run_and_mask(by_hand.eval(), x)).all()


@pytest.mark.parametrize("argv,message", [
    (["visualize", "x.png"], "needs --run RUN_DIR"),
    (["visualize", "--run", "r", "--model", "m", "x.png"], "not both"),
])
def test_visualize_mistakes(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_an_unreadable_image_is_one_line_not_a_traceback(run, tmp_path, capsys):
    run_dir, _ = run
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    for argv in (["visualize", "--run", str(run_dir), str(bad), "--out", str(tmp_path)],
                 ["predict", "--run", str(run_dir), str(bad)]):
        assert main(argv) == 2
        assert f"cannot read {bad}" in capsys.readouterr().err


@pytest.mark.parametrize("method,rule", [("adapter", ["--reduction", "class-attention", "--keep-rate", "0.5"]),
                                         ("vpt", ["--reduction", "tome", "--tome-r", "4,0,0,0,0,0,0,0,0,0,0,3"])])
def test_adapter_and_vpt_under_a_reduction_train_and_export(tmp_path, run, method, rule):
    """The pair's run reloads as it trained (method and rule recorded), and its ONNX file, whose
    token counts are static per input size, computes what the run computes at any batch size.
    (ToMe's schedule merges at two blocks only: each merging block adds seconds to the export.)"""
    _, folder = run
    out = tmp_path / method
    assert main(["train", "--model", "st_vit_micro_patch4_32", "--no-pretrained", "--data", f"folder:{folder}",
                 "--out", str(out), "--method", method, *rule, "--epochs", "1", "--batch-size", "4",
                 "--num-workers", "0", "--lr", "0.01"]) == 0
    model, _ = load_run(out)
    assert model.sparse_tuning.config.reduction == rule[1]
    assert_onnx_matches_the_run(out, tmp_path / "m.onnx", (1, 3))
