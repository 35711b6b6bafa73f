"""What a user gets from the defaults: the command a new user types, with only the options a user
must give, on Fashion-MNIST as Debian installs it and on every task of the suite.

    python benchmarks/suite/defaults.py --weights dinov2_vits14.safetensors --tasks-root /tmp/suite-data \
        --runs /tmp/defaults-runs

Each run is `sparse-tuning train` itself, in a subprocess, unchanged but for --data and --out:

    sparse-tuning train --model vit_small_patch14_dinov2 --weights W --data DATA --img-size 112 --epochs 5 \
        --train-samples 1000 --eval-samples 1000 --method sparse-tuning --seed 0 --out RUN

Also the first command with --augment crop-flip: what --augment auto chooses against.
Writes defaults.json: per data, the final top-1, what the run chose (learning rate, warmup,
batch, augmentation, each with its reason, from the run's config.json) and the seconds it took;
and the suite's own recipe on the same task (results.json's Sparse-Tuning cell), where it exists.
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
TASKS = ("fashion-mnist", "mnist", "animal-mnist", "cv-digits")
FASHION_MNIST = "fashionmnist:/usr/share/datasets/fashion-mnist"
SUITE_CONFIG = "sparse-tuning+class-attention@0.7"


def command(weights: str, data: str, out: Path, *extra: str) -> list[str]:
    return ["sparse-tuning", "train", "--model", "vit_small_patch14_dinov2", "--weights", weights, "--data", data,
            "--img-size", "112", "--epochs", "5", "--train-samples", "1000", "--eval-samples", "1000",
            "--method", "sparse-tuning", "--seed", "0", "--out", str(out), *extra]


def run(weights: str, name: str, data: str, runs: Path, *extra: str) -> dict:
    out = runs / name
    if not (out / "results.json").is_file():
        start = time.perf_counter()
        subprocess.run(command(weights, data, out, *extra), check=True, stdout=subprocess.DEVNULL)
        (out / "wall_s.txt").write_text(f"{time.perf_counter() - start:.0f}\n")
    results = json.loads((out / "results.json").read_text())
    config = json.loads((out / "config.json").read_text())
    shown = command("W", data, Path("RUN"), *extra)
    return {"command": " ".join(shown), "top1": results["final"]["top1"], "images": results["final"]["images"],
            "lr": config["train"]["lr"], "warmup_epochs": config["train"]["warmup_epochs"],
            "batch_size": config["train"]["batch_size"], "augment": config["augment"], "choices": config["choices"],
            "wall_s": float((out / "wall_s.txt").read_text())}


def suite_recipe(task: str) -> dict | None:
    """The suite's Sparse-Tuning on the task (4 epochs, learning rate chosen on validation)."""
    cells = sorted((HERE / "cells" / task / SUITE_CONFIG).glob("seed*.json"))
    if not cells:
        return None
    top1 = [json.loads(p.read_text())["top1"] for p in cells]
    return {"top1": top1, "top1_mean": statistics.mean(top1), "seeds": len(top1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True)
    p.add_argument("--tasks-root", required=True)
    p.add_argument("--runs", type=Path, required=True)
    p.add_argument("--out", type=Path, default=HERE / "defaults.json")
    args = p.parse_args()
    rows = {"fashionmnist (Debian's)": run(args.weights, "fashionmnist", FASHION_MNIST, args.runs),
            # what --augment auto avoids here: the same command with crops and flips
            "fashionmnist (Debian's), --augment crop-flip": run(args.weights, "fashionmnist-crop-flip", FASHION_MNIST,
                                                               args.runs, "--augment", "crop-flip")}
    for task in TASKS:
        rows[task] = run(args.weights, task, f"folder:{Path(args.tasks_root) / task}", args.runs)
        rows[task]["suite_recipe"] = suite_recipe(task)
    import torch

    meta = {"command": "python benchmarks/suite/defaults.py " + " ".join(sys.argv[1:]), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"), "machine": f"{torch.get_num_threads()} threads, CPU",
            "note": "one seed (0) per data; top-1 over 1,000 class-balanced test images"}
    args.out.write_text(json.dumps({"runs": rows, "meta": meta}, indent=1) + "\n")
    for name, r in rows.items():
        ref = r.get("suite_recipe")
        print(f"{name:24s} top-1 {r['top1']:.1f}" + (f"  (suite recipe {ref['top1_mean']:.1f}, {ref['seeds']} seeds)"
                                                      if ref else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
