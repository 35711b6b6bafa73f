"""Is the suite's learning-rate grid wide enough? Every adapter method chose its top value (3x
the default) on almost every task; this trains the next value up, 10x the default, the same
way (seed 0, train800 -> val200), for Sparse-Tuning, LoRA and LoRA + class-attention.

    python benchmarks/suite/lr_wider.py --weights dinov2_vits14.safetensors --tasks-root /tmp/suite-data \
        --runs /tmp/suite-runs [--jobs 2]

Cells go to lr-wider/TASK/NAME/lr-VALUE.json (beside, not into, the suite's cells, whose grid
stays as it is); lr_wider.md puts them next to the suite's three values.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "real")]
import suite  # noqa: E402

NAMES = ("sparse-tuning+class-attention@0.7", "lora", "lora+class-attention@0.7")
FACTOR = 10.0


def train(args: argparse.Namespace, task: str, name: str) -> None:
    lr = suite.lr_of(name, FACTOR)
    cfg = suite.run_config(args, name, task, 0, lr, split="-lr")
    suite.train_cell(args, HERE / "lr-wider" / task / name / f"lr-{lr:g}.json",
                     args.runs / task / name / f"lr-{lr:g}", cfg)


def report() -> str:
    import platform
    import time

    import torch

    lines = ["# The learning-rate grid, one value wider", "",
             "`python benchmarks/suite/lr_wider.py --weights dinov2_vits14.safetensors --tasks-root /tmp/suite-data "
             "--runs /tmp/suite-runs --jobs 2`", "",
             f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, two CPU cores (two runs of one thread at a time), "
             f"torch {torch.__version__}; the protocol of suite.py.", "",
             "Validation top-1 (%) on each task's 200 validation images after training on its 800 (seed 0); the "
             "first three columns are the suite's grid (`cells/`, trained where its cells say: the GPU), the last is 10x "
             "the default (`lr-wider/`, trained here). One seed on 200 images: a point is two images, and the two "
             "devices' runs at the same rate differ by up to 4 points (`cells-cpu/`).", "",
             "| configuration | task | 1/3x | 1x | 3x | 10x |", "|---|---|---:|---:|---:|---:|"]
    for name in NAMES:
        for task in suite.TASKS:
            cells = [HERE / "cells" / task / name / f"lr-{suite.lr_of(name, f):g}.json" for f in suite.LR_FACTORS]
            cells.append(HERE / "lr-wider" / task / name / f"lr-{suite.lr_of(name, FACTOR):g}.json")
            top1 = [f"{json.loads(c.read_text())['top1']:.1f}" if c.is_file() else "—" for c in cells]
            lines.append(f"| {name} | {task} | " + " | ".join(top1) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    suite.add_arguments(p)
    p.add_argument("--unit", help=argparse.SUPPRESS)  # TASK/NAME: one unit, for --jobs
    args = p.parse_args()
    args.runs = args.runs.resolve()
    units = [f"{t}/{n}" for n in NAMES for t in args.tasks]
    if args.unit:  # a unit of --jobs: the parent writes the report
        train(args, *args.unit.split("/", 1))
        return 0
    if args.jobs > 1:  # one process of one thread per unit, --jobs at a time
        base = [sys.executable, __file__, *suite.strip_options(sys.argv[1:], ("--jobs",))]
        failed = suite.run_processes({unit.replace("/", "."): [*base, "--unit", unit] for unit in units}, args.jobs,
                                     args.runs / "logs-lr-wider")
        if failed:
            raise SystemExit(f"{len(failed)} units failed: {failed}")
    else:
        for unit in units:
            train(args, *unit.split("/", 1))
    (HERE / "lr_wider.md").write_text(report())
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
