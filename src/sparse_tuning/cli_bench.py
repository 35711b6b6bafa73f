"""Commands bench (every method side by side) and sweep (one trained run across keep rates)."""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import platform
import shlex
import time
from pathlib import Path

import torch

from .bench import EAGER, BenchSetup, markdown_table, plot, run_bench
from .flops import flop_report
from .run import load_eval_data, load_run, read_run_config
from .stats import accuracy_interval
from .train import evaluate, resolve_device
from .visualize import keep_rate_plot

BENCH_ORDER = ("full", "linear", "adapter", "adaptformer", "lora", "vpt", "ts-only", "da-only", "sparse-tuning", EAGER)


def _machine(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads ({platform.platform()})"


def run_accuracies(run_dirs: list[str]) -> dict[str, float]:
    """Best test top-1 of trained runs, by method."""
    out = {}
    for run in run_dirs:
        cfg = read_run_config(run)
        results = Path(run) / "results.json"
        if not results.is_file():
            raise FileNotFoundError(f"{results} not found: the run has not finished")
        out[cfg["method"]] = json.loads(results.read_text())["best"]["top1"]
    return out


def bench_markdown(meta: dict, rows: list[dict]) -> str:
    """bench.md: how it was measured (command, date, machine), then the table."""
    setup = meta["setup"]
    lines = [f"# {setup['model']}, {setup['device']}, batch {setup['batch_size']}, amp {setup['amp']}", "",
             f"- command: `{meta['command']}`", f"- date: {meta['date']}", f"- machine: {meta['machine']}",
             f"- torch: {meta['torch']}",
             f"- timing: median of {meta['rounds']} interleaved rounds after {meta['warmup']} warm-up round(s)",
             f"- memory: {meta['memory']}", "", markdown_table(rows), ""]
    return "\n".join(lines)


def cmd_bench(args: argparse.Namespace) -> int:
    methods = list(BENCH_ORDER) if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in BENCH_ORDER]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; expected any of {', '.join(BENCH_ORDER)}")
    device = resolve_device(args.device)
    if args.weights and not Path(args.weights).is_file():
        raise FileNotFoundError(f"weights file not found: {args.weights}")
    setup = BenchSetup(args.model, args.img_size, args.batch_size, device, args.amp, weights=args.weights)
    accuracy = run_accuracies(args.runs) if args.runs else None
    rows = run_bench(setup, methods, args.rounds, args.warmup, memory=not args.no_memory, accuracy=accuracy)
    meta = {"command": "sparse-tuning " + shlex.join(args.argv),
            "date": datetime.date.today().isoformat(), "machine": _machine(device), "torch": torch.__version__,
            "setup": setup.__dict__, "rounds": args.rounds, "warmup": args.warmup,
            "memory": "cuda max_memory_allocated" if device.startswith("cuda") else
                      "peak RSS of a fresh process during the phase minus RSS before it (VmHWM)"}
    table = markdown_table(rows)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    with open(out / "bench.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
        writer.writeheader()
        writer.writerows(rows)
    (out / "bench.md").write_text(bench_markdown(meta, rows))
    plot(rows, str(out / "bench.png"), f"{args.model} on {meta['machine']}, batch {args.batch_size}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    rates = [float(r) for r in args.keep_rates.split(",") if r.strip()]
    device = resolve_device(args.device)
    model, cfg = load_run(args.run)
    if getattr(model, "sparse_tuning", None) is None or not model.sparse_tuning.sparsify_at:
        raise ValueError(f"sweep needs a run that sparsifies tokens; this one used --method {cfg['method']}")
    if cfg.get("video", {}).get("frames"):
        raise ValueError("sweep measures image runs; for a video run, use eval --keep-rate")
    images = load_eval_data(model, cfg, args.data)  # loaded once, evaluated at every keep rate
    model.to(device).eval()
    rows = []
    size = (3, *model.patch_embed.img_size)
    x = torch.randn(args.batch_size, *size, device=device)
    for rate in rates:
        model.sparse_tuning.keep_rate = rate
        result = evaluate(model, images.eval, args.batch_size, device, cfg["train"]["amp"])
        gflops = flop_report(model, size).gflops
        times = []
        with torch.no_grad():
            for i in range(args.rounds + 1):
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                t = time.perf_counter()
                model(x)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                if i:
                    times.append(time.perf_counter() - t)
        times.sort()
        rows.append({"keep_rate": rate, "top1": result["top1"], **({"top5": result["top5"]} if "top5" in result else {}),
                     "top1_ci95": accuracy_interval(result["top1"], result["images"]), "images": result["images"],
                     "gflops": gflops, "images_per_s": args.batch_size / times[len(times) // 2]})
    top5 = all("top5" in r for r in rows)  # not for tasks of 5 classes or fewer
    lines = ["| keep rate | top-1 (95% interval) |" + (" top-5 |" if top5 else "") + " GFLOPs | images/s |",
             "|---:|---:|" + ("---:|" if top5 else "") + "---:|---:|"]
    lines += [f"| {r['keep_rate']} | {r['top1']:.2f} ({r['top1_ci95'][0]:.1f}-{r['top1_ci95'][1]:.1f}) |"
              + (f" {r['top5']:.2f} |" if top5 else "") + f" {r['gflops']:.3f} | {r['images_per_s']:.1f} |"
              for r in rows]
    print("\n".join(lines))
    out = Path(args.out or args.run)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    keep_rate_plot(rows, out / "sweep.png", title=f"{cfg['model']}, {cfg['method']} run: accuracy across keep rates "
                                             f"({rows[0]['images']} {images.eval_split} images)")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("bench", help="every method side by side: parameters, GFLOPs, time, memory")
    p.add_argument("--model", default="vit_base_patch16_224")
    p.add_argument("--methods", default="all", help=f"all, or comma-separated: {', '.join(BENCH_ORDER)}")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--weights", default=None, help="local backbone weights (default: random values; speed does "
                                                   "not depend on them)")
    p.add_argument("--amp", choices=("bf16", "fp16", "off"), default="off")
    p.add_argument("--rounds", type=int, default=10, help="timed rounds (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurements")
    p.add_argument("--runs", nargs="*", default=None, help="trained run folders whose accuracy joins the table")
    p.add_argument("--out", default="bench")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("sweep", help="one trained run across keep rates: accuracy, GFLOPs, throughput")
    p.add_argument("--run", required=True)
    p.add_argument("--data", default=None, help="data spec (default: the run's)")
    p.add_argument("--keep-rates", default="0.5,0.6,0.7,0.8,0.9,1.0")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=None, help="folder for sweep.md/json/png (default: the run folder)")
    p.set_defaults(func=cmd_sweep)
