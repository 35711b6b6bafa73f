"""Many tasks on one backbone, measured: the memory of N trained runs held by tools.multitask
(one frozen DINOv2 ViT-S/14, N adapter sets) against N separately loaded models, and the time a
request for another task costs.

    python benchmarks/multitask/multitask.py --runs RUN [RUN ...]

The runs are the suite's (benchmarks/suite: DINOv2 ViT-S/14 at 112, seed 0 of each task):
Sparse-Tuning on fashion-mnist, mnist, animal-mnist and cv-digits, and LoRA on fashion-mnist,
mnist and animal-mnist. Memory is counted two ways: the bytes of parameter and buffer storage
the models hold (each tensor once; exact), and the resident memory of a fresh process after
loading them (Linux VmRSS, minus the process's before any model). Switching: the median latency
of one image when requests alternate between two tasks, next to requests for one task.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = """
import json, sys
def rss():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1]) * 1024
import torch, sparse_tuning.training.run as run, sparse_tuning.tools.multitask as mt
torch.zeros(1)
before = rss()
runs = json.loads(sys.argv[2])
if sys.argv[1] == 'shared':
    held = mt.MultiTask({str(i): r for i, r in enumerate(runs)})
else:
    held = [run.load_run(r)[0] for r in runs]
print(json.dumps(rss() - before))
"""


def rss_after_loading(mode: str, runs: list[str]) -> int:
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, json.dumps(runs)], capture_output=True, text=True,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    return int(proc.stdout.strip().splitlines()[-1])


def switching(runs: list[str], rounds: int) -> dict[str, float]:
    import torch

    from sparse_tuning.tools.multitask import MultiTask

    multi = MultiTask({"a": runs[0], "b": runs[1]})
    x = torch.randn(1, 3, 112, 112)
    for task in ("a", "b"):
        multi(x, task)
    one, alternating = [], []
    for i in range(rounds):
        start = time.perf_counter()
        multi(x, "a")
        one.append(time.perf_counter() - start)
        start = time.perf_counter()
        multi(x, "b" if i % 2 else "a")
        alternating.append(time.perf_counter() - start)
    return {"one_task_ms": 1000 * statistics.median(one), "alternating_ms": 1000 * statistics.median(alternating)}


def main() -> int:
    import datetime
    import platform

    import torch

    from sparse_tuning.tools.multitask import MultiTask, unique_bytes
    from sparse_tuning.training.run import load_run

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--rounds", type=int, default=50)
    args = p.parse_args()
    torch.set_num_threads(1)
    multi = MultiTask({str(i): r for i, r in enumerate(args.runs)})
    shared = multi.memory()
    separate = [unique_bytes([load_run(r)[0]]) for r in args.runs]
    methods = [json.loads((Path(r) / "config.json").read_text())["method"] for r in args.runs]
    results = {
        "date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, 1 thread",
        "command": "python benchmarks/multitask/multitask.py --runs " + " ".join(args.runs),  # the suite's scratch runs
        "tasks": len(args.runs), "methods": methods,
        "storage_mb": {"shared": shared["shared_bytes"] / 2 ** 20, "separate": sum(separate) / 2 ** 20,
                       "one_model": separate[0] / 2 ** 20},
        "rss_mb": {"shared": rss_after_loading("shared", args.runs) / 2 ** 20,
                   "separate": rss_after_loading("separate", args.runs) / 2 ** 20},
        "switch": switching(args.runs, args.rounds),
        "load_seconds": multi.load_seconds,
    }
    (HERE / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    s, r, w = results["storage_mb"], results["rss_mb"], results["switch"]
    text = "\n".join([
        f"# {len(args.runs)} tasks on one DINOv2 ViT-S/14 ({results['date']}, {results['machine']})", "",
        f"`{results['command']}`", "",
        "| held | weights in memory (MB) | resident memory after loading (MB) |", "|---|---:|---:|",
        f"| one backbone + {len(args.runs)} adapter sets (tools.multitask) | {s['shared']:.1f} | {r['shared']:.1f} |",
        f"| {len(args.runs)} separate models | {s['separate']:.1f} | {r['separate']:.1f} |",
        f"| one model | {s['one_model']:.1f} | |", "",
        f"Methods: {', '.join(methods)}. One image at 112x112, median of {args.rounds}: "
        f"{w['one_task_ms']:.1f} ms for requests to one task, {w['alternating_ms']:.1f} ms when they alternate "
        "between two (a task is chosen by a dictionary lookup: nothing is swapped).", ""])
    (HERE / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
