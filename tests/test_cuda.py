"""The CUDA paths: they run where a GPU is and are skipped (with the reason) where none is."""
import pytest
import torch
from conftest import randomize_adapters, tiny_vit
from data_files import make_folder

import sparse_tuning as st

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_training_follows_fp32_training_and_trains_what_it_should(tmp_path, amp):
    """The same run in fp32 and under autocast: the losses of each step agree to half precision's
    tolerance (fails if amp diverges, or if it is silently not applied, which the step time of a
    scaler run would not show), and only the adapters and head move."""
    import json

    from sparse_tuning.training.config import resolve_config
    from sparse_tuning.training.run import build_model, load_run, train_run

    folder = make_folder(tmp_path / "ds", classes=3, train=8, val=4)
    losses = {}
    for precision in ("off", amp):
        cfg = resolve_config({"model": "st_vit_micro_patch4_32", "pretrained": False, "data": f"folder:{folder}",
                              "train": {"epochs": 2, "batch_size": 8, "amp": precision, "device": "cuda",
                                        "num_workers": 0, "log_every": 1}})
        train_run(cfg, tmp_path / precision)
        losses[precision] = [l["loss"] for l in map(json.loads, (tmp_path / precision / "metrics.jsonl")
                                                    .read_text().splitlines()) if "lr" in l]
    assert len(losses["off"]) == len(losses[amp]) == 6
    assert all(abs(a - b) < 0.05 * max(1.0, abs(a)) for a, b in zip(losses["off"], losses[amp])), losses
    assert losses["off"] != losses[amp]  # autocast did change the arithmetic
    trained, cfg = load_run(tmp_path / amp)
    fresh = build_model(cfg, 3)
    moved = {n for n, p in trained.named_parameters() if not torch.equal(p, dict(fresh.named_parameters())[n])}
    assert moved and all(".adapter." in n or n.startswith("head.") for n in moved)


def test_fused_and_eager_attention_agree_on_cuda():
    model = st.apply(tiny_vit(), st.SparseTuningConfig())
    randomize_adapters(model)
    model = model.cuda()
    x = torch.randn(4, 3, 32, 32, device="cuda")
    with torch.no_grad():
        fused = model(x)
        kept = st.kept_tokens(model)
        model.sparse_tuning.fused_attn = False
        eager = model(x)
        assert all(torch.equal(a, b) for a, b in zip(st.kept_tokens(model), kept))  # fp32: the same tokens
        model.sparse_tuning.fused_attn = True
        with torch.autocast("cuda", dtype=torch.bfloat16):
            fused16 = model(x).float()
    assert torch.allclose(fused, eager, atol=1e-4)
    assert torch.allclose(fused16, fused, atol=5e-2)


def test_bench_measures_cuda_memory(tmp_path):
    from sparse_tuning.tools.bench import BenchSetup, run_bench

    rows = run_bench(BenchSetup("st_vit_micro_patch4_32", batch_size=8, device="cuda", amp="bf16"),
                     ["adaptformer", "sparse-tuning"], rounds=2, warmup=1)
    by = {r["method"]: r for r in rows}
    assert all(r["train_memory_mb"] > 0 for r in rows)
    assert by["sparse-tuning"]["train_memory_mb"] < by["adaptformer"]["train_memory_mb"]


def test_export_on_cuda_matches(tmp_path):
    from sparse_tuning.cli import main

    folder = make_folder(tmp_path / "ds", classes=3, train=8, val=4)
    run = tmp_path / "run"
    assert main(["train", "--model", "st_vit_micro_patch4_32", "--no-pretrained", "--data", f"folder:{folder}",
                 "--epochs", "1", "--batch-size", "8", "--num-workers", "0", "--device", "cuda", "--out", str(run)]) == 0
    assert main(["export", "--run", str(run), "--format", "export", "--out", str(tmp_path / "m.pt2")]) == 0
    from sparse_tuning.training.run import load_run

    model, _ = load_run(run)
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        expected = model.eval()(x)
        exported = torch.export.load(str(tmp_path / "m.pt2")).module()
        device = next(iter(exported.state_dict().values())).device
        got = exported(x.to(device)).cpu()
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
