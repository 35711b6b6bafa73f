"""Real processes: a run killed with SIGKILL and resumed ends where an uninterrupted one does;
two gloo ranks train to the same adapters as one process with the same global batch."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from data_files import make_folder
from safetensors.torch import load_file

ARGS = ["--model", "st_vit_micro_patch4_32", "--no-pretrained", "--epochs", "5", "--batch-size", "8",
        "--lr", "0.01", "--warmup-epochs", "1", "--num-workers", "0", "--log-every", "1", "--deterministic"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def cli(*args, **kw):
    return [sys.executable, "-m", "sparse_tuning", *args]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("data") / "ds", classes=3, train=16, val=4)


def steps_logged(run):
    path = run / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [json.loads(l).get("step", 0) for l in path.read_text().splitlines() if l.strip()]
    return max(steps, default=0)


def test_sigkill_and_resume_end_with_the_uninterrupted_weights(folder, tmp_path):
    data = ["--data", f"folder:{folder}"]
    ref, run = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(cli("train", *ARGS, *data, "--out", str(ref)), check=True, env=ENV, capture_output=True, timeout=300)

    proc = subprocess.Popen(cli("train", *ARGS, *data, "--out", str(run), "--save-every", "1"), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while steps_logged(run) < 9 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run must be killed mid-way"
    assert not (run / "results.json").exists()
    assert 0 < json.loads((run / "checkpoints" / "latest.json").read_text())["step"] < 30

    done = subprocess.run(cli("train", "--resume", str(run)), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    a, b = load_file(str(ref / "adapters.safetensors")), load_file(str(run / "adapters.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines() if "loss" in l
             and "split" not in l]
    assert steps == list(range(1, 31)), "metrics.jsonl has each step once"


def test_two_gloo_ranks_match_one_process(folder, tmp_path):
    args = [*ARGS, "--epochs", "2", "--data", f"folder:{folder}"]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    subprocess.run(cli("train", *args, "--out", str(single)), check=True, env=ENV, capture_output=True, timeout=300)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "sparse_tuning", "train", *args, "--out", str(ddp)],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load_file(str(single / "adapters.safetensors")), load_file(str(ddp / "adapters.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    ra = json.loads((single / "results.json").read_text())["final"]
    rb = json.loads((ddp / "results.json").read_text())["final"]
    assert ra["images"] == rb["images"] == 12 and ra["top1"] == rb["top1"]
