"""Video GFLOPs per clip of ViT-B/16 (8 frames, 224x224): dense vs Sparse-Tuning, both token layouts.

    python benchmarks/flops_video.py

Writes benchmarks/flops_video.md and .json. Analytic counts (meta device, no weights).
"""
from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path

import timm
import torch

from sparse_tuning.tools.flops import model_cost

RUNS = [("joint", "dense"), ("joint", "sparse-tuning"), ("frames", "dense"), ("frames", "sparse-tuning")]


def measure(layout: str, method: str) -> dict:
    return model_cost("vit_base_patch16_224", method, num_classes=400, frames=8, video_tokens=layout)


def main() -> None:
    rows = [measure(layout, method) for layout, method in RUNS]
    meta = {"date": datetime.date.today().isoformat(), "machine": platform.platform(), "torch": torch.__version__,
            "timm": timm.__version__, "command": "python benchmarks/flops_video.py"}
    out = Path(__file__).with_suffix("")
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = ["# Video GFLOPs per clip: ViT-B/16, 8 frames at 224x224, 400 classes", "",
             f"Command: `{meta['command']}`  ", f"Date: {meta['date']}; torch {meta['torch']}, timm {meta['timm']}; "
             "analytic counts (meta device); 1 GFLOP = 1e9 multiply-accumulates. joint: tubelets of 2 frames "
             "(4 x 196 tokens + class token); frames: each frame through the image model.", "",
             "| layout | method | GFLOPs per clip | % of dense (same layout) |", "|---|---|---:|---:|"]
    lines += [f"| {r['video_tokens']} | {r['method']} | {r['gflops']:.2f} | {100 * r['gflops'] / r['dense_gflops']:.1f}% |"
              for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
