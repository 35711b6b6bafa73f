"""An exported ONNX file as a model of its own (tools/onnx_engine.py): its metadata read back, its
int8 copy close to it, eval and predict with --model-file giving what they give with the run, and
a damaged or wrong file refused in one line."""
import json

import numpy as np
import onnx
import pytest
import torch
from data_files import train_micro_run

from sparse_tuning.cli import main
from sparse_tuning.tools.onnx_engine import OnnxModel, quantize
from sparse_tuning.training.run import eval_run, load_run, predict_run

MODEL = "st_vit_micro_patch4_32"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deploy")
    out, folder = train_micro_run(tmp, "--lr", "0.01", "--keep-rate", "0.5", train=6, val=4)
    onnx_file = tmp / "m.onnx"
    assert main(["export", "--run", str(out), "--format", "onnx", "--out", str(onnx_file)]) == 0
    return out, folder, onnx_file


def test_the_file_records_what_it_needs_to_stand_alone(run):
    run_dir, folder, path = run
    model, cfg = load_run(run_dir)
    meta = OnnxModel(path).metadata
    assert meta["format"] == "sparse-tuning-onnx/1" and meta["classes"] == cfg.classes and meta["keep_rate"] == 0.5
    assert meta["method"] == "sparse-tuning" and meta["task"] == "classify" and meta["quantized"] == "none"
    pre = meta["preprocessing"]
    # trained without augmentation (1 epoch, 18 images): evaluated with the squash resize, the model's mean and std
    assert pre["input_size"] == [3, 32, 32] and pre["crop_mode"] == "squash" and pre["crop_pct"] == 1.0
    from sparse_tuning.hosts import host_for

    assert (pre["mean"], pre["std"]) == tuple(list(host_for(model).data_config(model)[k]) for k in ("mean", "std"))


def test_the_file_computes_the_runs_logits(run):
    run_dir, _, path = run
    x = torch.randn(3, 3, 32, 32)
    model, _ = load_run(run_dir)
    with torch.no_grad():
        assert torch.allclose(OnnxModel(path)(x), model(x), atol=1e-4)


@pytest.mark.parametrize("mode", ["int8", "int8-static"])
def test_int8_keeps_the_metadata_and_stays_close(run, tmp_path, mode):
    """Quantized MatMul/Gemm nodes, the metadata carried over, logits within int8's error of the
    fp32 file's (relative to their spread) and the same top-1 on most images."""
    _, _, path = run
    calibration = torch.randn(16, 3, 32, 32) if mode == "int8-static" else None
    out = quantize(path, tmp_path / "q.onnx", mode, calibration)
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear", "QuantizeLinear", "QLinearMatMul"}
    fp32, int8 = OnnxModel(path), OnnxModel(out)
    assert int8.metadata["quantized"] == mode and int8.metadata["classes"] == fp32.metadata["classes"]
    x = torch.randn(16, 3, 32, 32)
    a, b = fp32(x), int8(x)
    assert (a - b).abs().max() < 0.25 * a.std() and (a.argmax(1) == b.argmax(1)).float().mean() >= 0.75


def test_eval_and_predict_with_the_file_match_the_run(run, capsys):
    run_dir, folder, path = run
    by_run = eval_run(run_dir, write=False)
    assert main(["eval", "--model-file", str(path), "--data", f"folder:{folder}"]) == 0
    printed = capsys.readouterr().out
    assert f"top-1 {by_run['top1']:.2f}" in printed and "onnxruntime" in printed
    images = sorted((folder / "val").rglob("*.png"))[:2]
    assert main(["predict", "--model-file", str(path), *map(str, images), "--top-k", "2"]) == 0
    from_file = json.loads(capsys.readouterr().out)
    from_run = predict_run(run_dir, [str(p) for p in images], top_k=2)
    assert [[t["label"] for t in p["top"]] for p in from_file] == [[t["label"] for t in p["top"]] for p in from_run]
    assert np.allclose([t["prob"] for p in from_file for t in p["top"]],
                       [t["prob"] for p in from_run for t in p["top"]], atol=1e-4)


def test_export_quantize_prints_its_accuracy_check(run, tmp_path, capsys):
    run_dir, _, _ = run
    out = tmp_path / "q.onnx"
    assert main(["export", "--run", str(run_dir), "--format", "onnx", "--quantize", "int8", "--out", str(out),
                 "--check-samples", "12"]) == 0
    printed = capsys.readouterr().out
    assert "check on 12 val images: top-1" in printed and "(int8, onnxruntime) vs" in printed


@pytest.mark.parametrize("argv, message", [
    (["eval", "--model-file", "F", "--run", "R"], "one of them"),
    (["eval"], "one of them"),
    (["eval", "--model-file", "F.onnx", "--data", "folder:x", "--keep-rate", "0.5"], "--keep-rate rebuilds a run"),
    (["export", "--run", "R", "--format", "torchscript", "--quantize", "int8", "--out", "x"], "applies to --format onnx"),
])
def test_mistakes_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_damaged_file_or_a_wrong_input_is_one_line(run, tmp_path, capsys):
    _, folder, path = run
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(path.read_bytes()[:5000])
    assert main(["eval", "--model-file", str(broken), "--data", f"folder:{folder}"]) == 2
    assert "cannot be read as an ONNX model" in capsys.readouterr().err
    with pytest.raises(ValueError, match="takes images of Bx3x32x32, got 2x3x40x40"):
        OnnxModel(path)(torch.randn(2, 3, 40, 40))


def test_a_segmentation_run_exports_and_predicts_masks_from_the_file(tmp_path):
    """#26's deployment: the exported segmentation model gives the run's pixel logits, and predict
    with the file writes the masks the run writes."""
    from test_segment_train import config, make_squares

    from sparse_tuning.training.run import train_run

    squares = make_squares(tmp_path / "seg", per_split=(8, 2))
    train_run(config(squares, keep_rate=0.5), tmp_path / "run", log=lambda line: None)
    path = tmp_path / "seg.onnx"
    assert main(["export", "--run", str(tmp_path / "run"), "--format", "onnx", "--out", str(path)]) == 0
    x = torch.randn(2, 3, 32, 32)
    model, _ = load_run(tmp_path / "run")
    with torch.no_grad():
        assert torch.allclose(OnnxModel(path)(x), model(x), atol=1e-4)
    image = str(squares / "val" / "images" / "0.png")
    by_file = main(["predict", "--model-file", str(path), "--masks", str(tmp_path / "a"), image])
    assert by_file == 0
    predict_run(tmp_path / "run", [image], masks=tmp_path / "b")
    from PIL import Image

    assert np.array_equal(np.array(Image.open(tmp_path / "a" / "0.png")), np.array(Image.open(tmp_path / "b" / "0.png")))


def test_every_engine_computes_the_same_logits(tmp_path):
    """What bench --engine times is the model: ONNX Runtime's output equals eager PyTorch's (int8
    within its quantization error). (torch.compile's parity: test_bench.py's compiled-model test.)"""
    from sparse_tuning.tools.bench import BenchSetup
    from sparse_tuning.tools.engines import engine_call, inference_model

    setup = BenchSetup(MODEL, batch_size=2, num_classes=5, keep_rate=0.5)
    x = torch.randn(3, 3, 32, 32)
    for row in ("dense", "sparse-tuning", "lora+class-attention"):
        model = inference_model(setup, row)
        eager = engine_call(model, "torch", tmp_path, row, None)(x)
        assert torch.allclose(engine_call(model, "onnxruntime", tmp_path, row, None)(x), eager, atol=1e-4), row
        int8 = engine_call(model, "onnxruntime-int8", tmp_path, row, None)(x)
        assert (int8 - eager).abs().max() < 0.25 * eager.std() + 1e-3


def test_bench_engine_writes_one_row_per_method_engine_and_batch(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--model", MODEL, "--methods", "sparse-tuning", "--engine", "torch,onnxruntime-int8",
                 "--batch-size", "1,4", "--rounds", "2", "--warmup", "1", "--threads", "1", "--out", str(out)]) == 0
    data = json.loads((out / "bench.json").read_text())
    rows = data["rows"]
    assert {(r["method"], r["engine"], r["batch_size"]) for r in rows} == {
        (m, e, b) for m in ("dense", "sparse-tuning") for e in ("torch", "onnxruntime-int8") for b in (1, 4)}
    by = {(r["method"], r["engine"], r["batch_size"]): r for r in rows}
    for r in rows:
        assert r["infer_images_per_s"] == pytest.approx(r["batch_size"] * 1000 / r["latency_p50_ms"])
        assert r["latency_p90_ms"] >= r["latency_p50_ms"]
        dense = by[("dense", r["engine"], r["batch_size"])]
        assert r["throughput_vs_dense"] == pytest.approx(r["infer_images_per_s"] / dense["infer_images_per_s"])
    assert data["meta"]["threads"] == 1 and data["meta"]["batch_sizes"] == [1, 4]
    assert (out / "bench.png").is_file() and "onnxruntime-int8" in (out / "bench.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--engine", "tensorrt"], "engine 'tensorrt'"),
    (["--batch-size", "1,8"], "several --batch-size values go with --engine"),
    (["--batch-size", "0"], "expected a positive integer"),
    (["--engine", "torch", "--compile"], "leave out --compile"),
])
def test_bench_engine_mistakes_are_one_line(argv, message, capsys, tmp_path):
    assert main(["bench", "--model", MODEL, "--methods", "sparse-tuning", "--out", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err
