"""Deployment formats round-trip: the exported model computes what the PyTorch model computes."""
import numpy as np
import pytest
import torch
from datasets import make_folder
from PIL import Image

import sparse_tuning as st
from sparse_tuning.cli import main
from sparse_tuning.run import load_run


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


def test_onnx_matches_pytorch_with_a_dynamic_batch(run, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    run_dir, _ = run
    assert main(["export", "--run", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = torch.randn(batch, 3, 32, 32)
        (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        assert np.allclose(logits, reference(run_dir, x).numpy(), atol=1e-4)


@pytest.mark.parametrize("fmt,load", [("torchscript", torch.jit.load),
                                      ("export", lambda p: torch.export.load(p).module())])
def test_torch_formats_match(run, tmp_path, fmt, load):
    run_dir, _ = run
    path = tmp_path / f"m.{fmt}"
    assert main(["export", "--run", str(run_dir), "--format", fmt, "--out", str(path)]) == 0
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
        # two rows of 256x256 cells (32 px images scaled 8x), four columns: the image and three steps
        assert img.size == ((256 + 4) * 4 + 4, 16 + (256 + 4) * 2 + 4)
