"""bench and sweep on a tiny model: the table's shape and sanity (speed itself is for benchmarks/)."""
import csv
import json

import pytest

from data_files import make_folder
from PIL import Image

from sparse_tuning.cli import main

MODEL = "st_vit_micro_patch4_32"


def test_bench_every_method_without_memory(tmp_path, capsys):
    assert main(["bench", "--model", MODEL, "--device", "cpu", "--batch-size", "4", "--rounds", "1",
                 "--warmup", "1", "--no-memory", "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    methods = [r["method"] for r in rows]
    assert methods == ["full", "linear", "adapter", "adaptformer", "lora", "vpt", "ts-only", "da-only",
                       "sparse-tuning", "sparse-tuning (eager)"]
    by = {r["method"]: r for r in rows}
    ref = by["sparse-tuning"]
    assert all(r["train_time_vs_st"] == pytest.approx(r["train_step_s"] / ref["train_step_s"]) and
               r["throughput_vs_st"] == pytest.approx(r["infer_images_per_s"] / ref["infer_images_per_s"]) for r in rows)
    assert by["sparse-tuning"]["gflops"] < by["adaptformer"]["gflops"]
    assert by["full"]["params_trainable"] == by["full"]["params_total"] > by["sparse-tuning"]["params_trainable"]
    assert all(r["train_step_s"] > 0 and r["infer_images_per_s"] > 0 for r in rows)
    assert all(0 < r["latency_ms"] <= r["latency_p90_ms"] for r in rows)
    assert table.count("\n") >= 11 and "| sparse-tuning |" in table
    with open(tmp_path / "bench.csv") as f:
        assert len(list(csv.DictReader(f))) == 10
    md = (tmp_path / "bench.md").read_text()
    assert f"- command: `sparse-tuning bench --model {MODEL}" in md and "- machine: " in md
    assert table.strip() in md
    with Image.open(tmp_path / "bench.png") as img:
        assert img.size[0] > img.size[1] > 100


def test_bench_memory_and_run_accuracy(tmp_path, capsys):
    folder = make_folder(tmp_path / "ds", classes=2, train=4, val=2)
    run = tmp_path / "run"
    assert main(["train", "--model", MODEL, "--no-pretrained", "--data", f"folder:{folder}", "--out", str(run),
                 "--epochs", "1", "--batch-size", "4", "--num-workers", "0"]) == 0
    assert main(["bench", "--model", MODEL, "--device", "cpu", "--methods", "adaptformer,sparse-tuning",
                 "--batch-size", "8", "--rounds", "1", "--warmup", "0", "--runs", str(run),
                 "--out", str(tmp_path / "b")]) == 0
    rows = {r["method"]: r for r in json.loads((tmp_path / "b" / "bench.json").read_text())["rows"]}
    assert all(r["train_memory_mb"] > 0 for r in rows.values())
    # The accuracy is the run's own best top-1, and the table says which run it comes from.
    best = json.loads((run / "results.json").read_text())["best"]["top1"]
    assert rows["sparse-tuning"]["top1"] == best and rows["sparse-tuning"]["runs"] == [str(run)]
    assert "top1" not in rows["adaptformer"]
    assert f"best test top-1 of the run `{run}`" in (tmp_path / "b" / "bench.md").read_text()
    # Several runs of one method (seeds): their mean and spread, every run named.
    from sparse_tuning.tools.bench import run_accuracies

    two = run_accuracies([str(run), str(run)])["sparse-tuning"]
    assert two == {"top1": best, "top1_sd": 0.0, "runs": [str(run), str(run)]}


def test_sweep(tmp_path, capsys):
    folder = make_folder(tmp_path / "ds", classes=2, train=4, val=2)
    run = tmp_path / "run"
    assert main(["train", "--model", MODEL, "--no-pretrained", "--data", f"folder:{folder}", "--out", str(run),
                 "--epochs", "1", "--batch-size", "4", "--num-workers", "0"]) == 0
    assert main(["sweep", "--run", str(run), "--keep-rates", "0.5,1.0", "--device", "cpu", "--rounds", "1",
                 "--batch-size", "4"]) == 0
    rows = json.loads((run / "sweep.json").read_text())
    assert [r["keep_rate"] for r in rows] == [0.5, 1.0]
    assert rows[0]["gflops"] < rows[1]["gflops"]
    assert (run / "sweep.png").is_file()


def test_bench_rejects_unknown_methods(capsys):
    assert main(["bench", "--model", MODEL, "--methods", "sparse-tuning,magic", "--no-memory"]) == 2
    assert "magic" in capsys.readouterr().err


def test_bench_builds_from_weights_resampled_to_the_input_size(tmp_path):
    """--weights: the timed models hold the file's backbone (position embedding resampled)."""
    import timm
    import torch
    from safetensors.torch import save_file

    from sparse_tuning.tools.bench import BenchSetup, build

    torch.manual_seed(4)
    source = timm.create_model(MODEL, num_classes=0)
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    model = build(BenchSetup(MODEL, img_size=48, weights=str(tmp_path / "w.safetensors")), "sparse-tuning")
    assert model.pos_embed.shape[1] == 1 + 12 * 12
    assert torch.equal(model.blocks[5].attn.qkv.weight, source.blocks[5].attn.qkv.weight)
    assert main(["bench", "--model", MODEL, "--weights", str(tmp_path / "missing.safetensors"), "--out",
                 str(tmp_path)]) == 2


def test_percentile_by_hand():
    from sparse_tuning.tools.timing import percentile

    assert percentile([4.0, 1.0, 3.0, 2.0, 5.0], 50) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0], 90) == 10.0
    assert percentile([1.0, 2.0], 90) == pytest.approx(1.9)


def test_a_compiled_model_computes_what_the_eager_one_does(images_of_four=None):
    """torch.compile of a patched model (aot_eager: the graph, without code generation, which a
    CPU test cannot afford): the same outputs and the same kept tokens; then bench --compile."""
    import torch
    from conftest import randomize_adapters, tiny_vit

    import sparse_tuning as st
    from sparse_tuning.training.devices import compiled

    model = st.apply(tiny_vit(), st.SparseTuningConfig())
    randomize_adapters(model)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
        kept = st.kept_tokens(model)
        got = compiled(model, True, "aot_eager")(x)
    assert torch.allclose(got, expected, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(st.kept_tokens(model), kept))


def test_cpu_memory_grows_with_what_a_phase_holds():
    """The CPU measurement (peak resident memory of a fresh process over the phase) against an
    independent expectation: inference at batch 256 holds at least its input and one block's
    activations more than at batch 2, 256 x 65 tokens x 64 channels x 4 bytes = 4.3 MB each,
    and training holds more than inference."""
    from sparse_tuning.tools.bench import BenchSetup, measure_phases

    small = measure_phases(BenchSetup(MODEL, batch_size=2, device="cpu"), "sparse-tuning", ("infer",))[0]
    big_infer, big_train = measure_phases(BenchSetup(MODEL, batch_size=256, device="cpu"), "sparse-tuning",
                                          ("infer", "train"))
    assert big_infer - small > 2 * 256 * 65 * 64 * 4
    assert big_train > big_infer
