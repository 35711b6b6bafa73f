"""The CUDA paths: they run where a GPU is and are skipped (with the reason) where none is."""
import pytest
import torch
from conftest import randomize_adapters, tiny_vit
from data_files import make_folder

import sparse_tuning as st

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_training_steps_are_finite_and_train_what_they_should(tmp_path, amp):
    from sparse_tuning.training.config import resolve_config
    from sparse_tuning.training.run import train_run

    folder = make_folder(tmp_path / "ds", classes=3, train=8, val=4)
    cfg = resolve_config({"model": "st_vit_micro_patch4_32", "pretrained": False, "data": f"folder:{folder}",
                          "train": {"epochs": 1, "batch_size": 8, "amp": amp, "device": "cuda", "num_workers": 0}})
    results = train_run(cfg, tmp_path / "run")
    assert torch.isfinite(torch.tensor(results["final"]["loss"]))


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
