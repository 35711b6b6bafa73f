"""Inference and training-step time of ViT-B/16: plain timm vs Sparse-Tuning (fused and eager).

The plain timm model trains all of its weights (full fine-tuning); Sparse-Tuning trains the Dense
Adapters and the head on the frozen backbone.

    python benchmarks/core_speed.py [--device cpu] [--batch-size 16] [--steps 5] [--out benchmarks/core_speed_cpu]

Random weights and data (speed does not depend on them). Variants are interleaved round by round,
so drift of a shared machine hits all alike; each figure is the median of the timed rounds after
one warm-up round. "eager" computes attention by hand in every block (the EViT / authors' way).
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from pathlib import Path

import timm
import torch

import sparse_tuning as st


def build(variant: str, device: str) -> torch.nn.Module:
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=100).to(device)
    if variant.startswith("sparse-tuning"):
        st.apply(model, st.SparseTuningConfig())
        model.sparse_tuning.fused_attn = variant == "sparse-tuning (fused)"
    return model


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def infer(model, x, device):
    model.eval()
    sync(device)
    t = time.perf_counter()
    with torch.no_grad():
        model(x)
    sync(device)
    return time.perf_counter() - t


def train_step(model, x, y, opt, device):
    model.train()
    sync(device)
    t = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.manual_seed(0)
    variants = ["timm (full fine-tuning)", "sparse-tuning (fused)", "sparse-tuning (eager)"]
    models = {v: build(v, args.device) for v in variants}
    opts = {v: torch.optim.AdamW([q for q in m.parameters() if q.requires_grad], lr=1e-3) for v, m in models.items()}
    x = torch.randn(args.batch_size, 3, 224, 224, device=args.device)
    y = torch.randint(0, 100, (args.batch_size,), device=args.device)
    times = {v: {"infer": [], "train": []} for v in variants}
    for r in range(args.steps + 1):  # round 0 is warm-up
        for v in variants:
            ti, tt = infer(models[v], x, args.device), train_step(models[v], x, y, opts[v], args.device)
            if r:
                times[v]["infer"].append(ti)
                times[v]["train"].append(tt)
    rows = []
    base = statistics.median(times["sparse-tuning (fused)"]["infer"]), statistics.median(times["sparse-tuning (fused)"]["train"])
    for v in variants:
        mi, mt = statistics.median(times[v]["infer"]), statistics.median(times[v]["train"])
        rows.append({"variant": v, "infer_s": mi, "images_per_s": args.batch_size / mi, "train_step_s": mt,
                     "infer_time_vs_sparse_tuning": mi / base[0], "train_time_vs_sparse_tuning": mt / base[1]})
    meta = {"date": datetime.date.today().isoformat(), "machine": platform.platform(),
            "cpu_threads": torch.get_num_threads(), "device": args.device, "batch_size": args.batch_size,
            "timed_rounds": args.steps, "torch": torch.__version__, "timm": timm.__version__,
            "command": f"python benchmarks/core_speed.py --device {args.device} --batch-size {args.batch_size} "
                       f"--steps {args.steps}" + (f" --out {args.out}" if args.out else "")}
    lines = [f"# ViT-B/16 inference and training step, {args.device}, fp32, batch {args.batch_size}", "",
             f"Command: `{meta['command']}`  ",
             f"Date: {meta['date']}; machine: {meta['machine']}, {meta['cpu_threads']} threads; "
             f"torch {meta['torch']}, timm {meta['timm']}; median of {args.steps} interleaved rounds.", "",
             "| variant | inference s/batch | images/s | train step s | inference time / sparse-tuning (fused) | train time / sparse-tuning (fused) |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['variant']} | {r['infer_s']:.3f} | {r['images_per_s']:.1f} | {r['train_step_s']:.3f} | "
              f"{r['infer_time_vs_sparse_tuning']:.2f}x | {r['train_time_vs_sparse_tuning']:.2f}x |" for r in rows]
    print("\n".join(lines))
    if args.out:
        Path(args.out + ".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        Path(args.out + ".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
