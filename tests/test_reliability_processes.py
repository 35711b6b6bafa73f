"""Real processes and signals: one run per folder at a time, Ctrl-C and SIGTERM stop cleanly;
and a table of a user's mistakes, each one line and exit status 2, nothing written."""
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
from data_files import make_folder, make_video_root

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
MODEL = ["--model", "st_vit_micro_patch4_32", "--no-pretrained"]


def cli(*args):
    return [sys.executable, "-m", "sparse_tuning", *map(str, args)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("data") / "ds", classes=3, train=8, val=4)


def long_run(folder, out, *extra):
    return subprocess.Popen(cli("train", *MODEL, "--data", f"folder:{folder}", "--epochs", "300", "--batch-size", "8",
                                "--warmup-epochs", "0", "--log-every", "1", "--out", out, *extra),
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for_steps(run, n, proc, limit=120):
    deadline = time.time() + limit
    while time.time() < deadline and proc.poll() is None:
        path = run / "metrics.jsonl"
        if path.exists() and sum('"loss"' in l and '"split"' not in l for l in path.read_text().splitlines()) >= n:
            return
        time.sleep(0.05)
    raise AssertionError("the run did not reach its steps")


# 2. two processes on one run folder
def test_a_second_process_on_a_run_folder_is_refused(folder, tmp_path):
    run = tmp_path / "run"
    first = long_run(folder, run, "--num-workers", "0")
    try:
        wait_for_steps(run, 1, first)
        for args in (["train", *MODEL, "--data", f"folder:{folder}", "--out", run], ["train", "--resume", run]):
            second = subprocess.run(cli(*args), env=ENV, capture_output=True, text=True, timeout=120)
            assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1, second.stderr
            assert "in use by another sparse-tuning process" in second.stderr or "--resume" in second.stderr
        assert first.poll() is None, "the first run goes on"
    finally:
        first.kill()
        first.wait()


# 8. Ctrl-C (SIGINT to the whole process group, workers included) and SIGTERM
@pytest.mark.parametrize("signum,code,group", [(signal.SIGINT, 130, True), (signal.SIGTERM, 143, False)])
def test_a_signal_stops_the_run_with_a_checkpoint_and_one_line(folder, tmp_path, signum, code, group):
    run = tmp_path / "run"
    proc = long_run(folder, run, "--num-workers", "2")
    wait_for_steps(run, 3, proc)
    (os.killpg(proc.pid, signum) if group else proc.send_signal(signum))
    t = time.time()
    _, err = proc.communicate(timeout=60)
    assert time.time() - t < 30
    assert proc.returncode == code, err
    lines = [l for l in err.strip().splitlines() if l]
    assert len(lines) == 1 and "Traceback" not in err and f"--resume {run}" in lines[0], err
    step = json.loads((run / "checkpoints" / "latest.json").read_text())["step"]
    assert step >= 3
    done = subprocess.run(cli("train", "--resume", run, "--epochs", "2"), env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "results.json").read_text())["final"]["epoch"] == 1


# The table: a user's mistakes at the command line.
def _trained_run(tmp_path, folder):
    from sparse_tuning.cli import main

    run = tmp_path / "trained"
    assert main(["train", *MODEL, "--data", f"folder:{folder}", "--epochs", "1", "--batch-size", "8",
                 "--num-workers", "0", "--out", str(run)]) == 0
    return run


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def setups(tmp_path, folder):
    """name -> (argv, what must not appear afterwards)."""
    (tmp_path / "bad.yaml").write_text("train: {epochs: 2\n  lr: [")
    for name, text in {"float": "epochs: 1.5", "string": 'img_size: "32"', "list": "model: [a]"}.items():
        (tmp_path / f"{name}.yaml").write_text(text + "\n")
    (tmp_path / "truncated.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    (tmp_path / "random.pth").write_bytes(os.urandom(4096))
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"state": Evil(tmp_path / "pwned")}, f)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("x")
    train = ["train", *MODEL, "--data", f"folder:{folder}"]
    out = tmp_path / "out"
    return {
        "malformed yaml": ([*train, "--config", tmp_path / "bad.yaml", "--out", out], "valid YAML"),
        "epochs 1.5": ([*train, "--config", tmp_path / "float.yaml", "--out", out], "expected an integer"),
        "img_size string": ([*train, "--config", tmp_path / "string.yaml", "--out", out], "img_size"),
        "model list": (["train", "--no-pretrained", "--data", f"folder:{folder}", "--config", tmp_path / "list.yaml",
                        "--out", out], "model"),
        "device foo": ([*train, "--device", "foo", "--out", out], "device"),
        "flops frames -2": (["flops", "--frames", "-2"], "frames"),
        "truncated weights": ([*train, "--weights", tmp_path / "truncated.safetensors", "--out", out], "not a checkpoint"),
        "random weights": ([*train, "--weights", tmp_path / "random.pth", "--out", out], "not a checkpoint"),
        "malicious pickle": ([*train, "--weights", tmp_path / "evil.pth", "--out", out], "not a checkpoint"),
        "out under a file": ([*train, "--out", tmp_path / "a-file" / "run"], "a-file"),
        "predict --output under a file": (["predict", "--run", "TRAINED", folder / "val" / "class_0" / "0.png",
                                           "--output", tmp_path / "a-file" / "p.json"], "a-file"),
        "predict with a damaged run": (["predict", "--run", "DAMAGED", folder / "val" / "class_0" / "0.png"],
                                       "damaged"),
        "a config.json edited to a wrong type": (["eval", "--run", "EDITED"], "expected an integer"),
        "predict a non-image": (["predict", "--run", "TRAINED", tmp_path / "notes.txt"], "cannot read"),
        "predict an empty folder": (["predict", "--run", "TRAINED", tmp_path / "empty"], "no image files"),
        "bench a resnet": (["bench", "--model", "resnet18", "--methods", "linear", "--rounds", "1",
                            "--no-memory", "--out", out], "not a timm VisionTransformer"),
        "eval a damaged run": (["eval", "--run", "DAMAGED"], "damaged"),
        "export a damaged run": (["export", "--run", "DAMAGED", "--format", "safetensors", "--out", out / "m"],
                                 "damaged"),
    }


def test_a_users_mistakes_are_one_line_and_exit_2_with_nothing_written(folder, tmp_path, capsys):
    """In this process (the error boundary is main()'s), each case as the command line gets it."""
    from sparse_tuning.cli import main

    run = _trained_run(tmp_path, folder)
    damaged = tmp_path / "damaged"
    subprocess.run(["cp", "-r", run, damaged], check=True)
    data = (damaged / "trainable.safetensors").read_bytes()
    (damaged / "trainable.safetensors").write_bytes(data[:len(data) // 2])
    edited = tmp_path / "edited"
    subprocess.run(["cp", "-r", run, edited], check=True)
    cfg = json.loads((edited / "config.json").read_text())
    cfg["train"]["epochs"] = 1.5
    (edited / "config.json").write_text(json.dumps(cfg))
    capsys.readouterr()
    failures = []
    for name, (argv, needle) in setups(tmp_path, folder).items():
        argv = [{"DAMAGED": str(damaged), "TRAINED": str(run), "EDITED": str(edited)}.get(a, str(a)) for a in argv]
        code = main(argv)
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        if not (code == 2 and len(lines) == 1 and "Traceback" not in err and needle in err):
            failures.append(f"{name}: exit {code}, {err[-300:]!r}")
        assert not (tmp_path / "out").exists(), name
    assert not failures, "\n".join(failures)
    assert not (tmp_path / "pwned").exists(), "a pickle in --weights ran code"


def test_a_video_without_frames_is_skipped_and_counted(tmp_path):
    import av
    import numpy as np

    root = make_video_root(tmp_path / "videos", per_class=2, frames=8)
    audio = root / "audio.mp4"
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    with open(root / "train.csv", "a") as f:
        f.write(f"{audio.name} 0\n")
    proc = subprocess.run(cli("train", *MODEL, "--data", f"kinetics:{root}", "--frames", "4", "--epochs", "1",
                              "--batch-size", "2", "--num-workers", "0", "--out", tmp_path / "run"),
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "skipped 1 unreadable training image" in proc.stdout + proc.stderr


# 4 and 5, with real kills: during an epoch's evaluation, and before the first checkpoint.
def _kill_when(run, proc, ready, limit=120):
    deadline = time.time() + limit
    while time.time() < deadline and proc.poll() is None:
        if ready():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    return False


def test_sigkill_during_an_evaluation_and_before_the_first_checkpoint_then_resume(tmp_path):
    data = make_folder(tmp_path / "ds", classes=3, train=8, val=60)  # a long evaluation: a window to kill in
    args = ["--data", f"folder:{data}", "--epochs", "2", "--batch-size", "8", "--warmup-epochs", "0",
            "--num-workers", "0", "--eval-batch-size", "4"]
    # During the evaluation of epoch 0: its last step's checkpoint is written, its evaluation not.
    run = tmp_path / "eval-killed"
    proc = subprocess.Popen(cli("train", *MODEL, *args, "--save-every", "3", "--out", run), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    latest = run / "checkpoints" / "latest.json"
    assert _kill_when(run, proc, lambda: latest.is_file() and json.loads(latest.read_text() or "{}").get("step") == 3
                      and '"split"' not in (run / "metrics.jsonl").read_text())
    assert '"split"' not in (run / "metrics.jsonl").read_text(), "killed before the evaluation ended"
    done = subprocess.run(cli("train", "--resume", run), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    evals = [json.loads(l)["epoch"] for l in (run / "metrics.jsonl").read_text().splitlines() if '"split"' in l]
    assert evals == [0, 1], "the interrupted evaluation ran on resume"
    # Before the first checkpoint: config.json written, no checkpoint yet.
    run = tmp_path / "early"
    proc = subprocess.Popen(cli("train", *MODEL, *args, "--out", run), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    assert _kill_when(run, proc, lambda: (run / "config.json").is_file())
    assert not (run / "checkpoints" / "latest.json").exists()
    again = subprocess.run(cli("train", *MODEL, *args, "--out", run), env=ENV, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 2 and "--resume" in again.stderr
    done = subprocess.run(cli("train", "--resume", run), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "results.json").read_text())["final"]["epoch"] == 1


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_bad_image_with_strict_data_and_loader_workers_exits_at_once(tmp_path, split):
    """A truncated image under --strict-data with 2 loader workers: one line, exit 2, and the
    process ends (it used to wait forever at exit on workers that ignore SIGTERM); the folder
    it made is gone, since no checkpoint exists to resume. The val case fails in evaluation."""
    data = make_folder(tmp_path / "ds", classes=3, train=8, val=4)
    bad = data / split / "class_0" / "0.png"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    out = tmp_path / "run"
    done = subprocess.run(cli("train", *MODEL, "--data", f"folder:{data}", "--strict-data", "--num-workers", "2",
                              "--epochs", "1", "--batch-size", "8", "--out", out),
                          env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [f"sparse-tuning train: error: cannot read {bad}: image file is truncated"]
    assert not out.exists()
