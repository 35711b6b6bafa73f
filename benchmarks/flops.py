"""GFLOPs and parameters of ViT-B/16 (and friends) per method: writes benchmarks/flops.md and .json.

    python benchmarks/flops.py [--models vit_base_patch16_224,...]

The counts are analytic (no weights, meta device), so the machine does not matter; the file
records it anyway with the date and the versions used.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
from pathlib import Path

import timm
import torch

from sparse_tuning.tools.flops import model_cost

RUNS = [  # (label, model_cost arguments)
    ("dense (plain timm)", {"method": "dense"}),
    ("da-only, b=32", {"method": "da-only"}),
    ("sparse-tuning, b=32", {}),
    ("sparse-tuning, b=8 (VTAB-1K)", {"bottleneck": 8}),
    ("ts-only", {"method": "ts-only"}),
]


def measure(model: str, kwargs: dict) -> dict:
    return model_cost(model, **kwargs)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="vit_base_patch16_224,vit_large_patch16_224")
    p.add_argument("--out", default=str(Path(__file__).with_suffix("")))
    args = p.parse_args()
    rows = [dict(measure(m, extra), label=label) for m in args.models.split(",") for label, extra in RUNS]
    meta = {"date": datetime.date.today().isoformat(), "machine": platform.platform(),
            "torch": torch.__version__, "timm": timm.__version__,
            "command": "python benchmarks/flops.py --models " + args.models}
    Path(args.out + ".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [f"# GFLOPs per method (batch 1, 224x224, fvcore convention: 1 GFLOP = 1e9 multiply-accumulates)",
             "", f"Command: `{meta['command']}`  ", f"Date: {meta['date']}; machine: {meta['machine']}; "
             f"torch {meta['torch']}, timm {meta['timm']}. Analytic counts (meta device, no weights); 1000-class head, whose 769,000 (ViT-B) parameters are in the trainable count.", "",
             "| model | method | GFLOPs | % of dense | params total | params trainable | tokens after each step |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        tokens = r["tokens_per_block"]
        steps = " / ".join(str(out) for n_in, out in tokens if n_in != out) or "none removed"
        lines.append(f"| {r['model']} | {r['label']} | {r['gflops']:.2f} | {100 * r['gflops'] / r['dense_gflops']:.1f}% "
                     f"| {r['params_total']:,} | {r['params_trainable']:,} | {steps} |")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
