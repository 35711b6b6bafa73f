"""The multi-task suite: every method, with and without token reduction, on four real image sets in
the VTAB-1K protocol, on the real DINOv2 ViT-S/14 backbone, offline, resumable.

    python benchmarks/suite/tasks.py --out /tmp/suite-data          # the tasks (once)
    python benchmarks/real/backbone.py --out dinov2_vits14.safetensors
    python benchmarks/suite/suite.py --weights dinov2_vits14.safetensors --tasks-root /tmp/suite-data \
        --runs /tmp/suite-runs

The protocol, the same for every configuration:
- tasks: fashion-mnist, mnist, animal-mnist, cv-digits (tasks.py), 10 classes each; 112x112 input
  (64 patch tokens).
- learning rate: chosen once per configuration and task, as VTAB-1K does: seed 0 trained on the
  800 training images at each of three values (the method's default, a third of it and three
  times it), top-1 on the 200 validation images decides (a tie keeps the default).
- runs: retrained on all 1,000 with the chosen rate and tested on the fixed held-out 2,000; seeds
  0-2 (0-4 for Sparse-Tuning and LoRA), each changing the initialisation of new weights and the
  data order; every configuration sees the same images.
- recipe: 4 epochs, batch 32, AdamW (weight decay 1e-4), the default warmup (a tenth of the
  run) and cosine decay, no augmentation; evaluated once, after the last epoch.

Phases (each skips what is done; --phases picks them):
  runs    the learning-rate choice and the seeds of every cell; each finished run's top-1 goes to
          cells/TASK/NAME/*.json (committed, small), so a stopped suite continues where it
          stopped, in this session or a later one; the run folders under --runs are scratch
  time    GFLOPs, training step time and inference throughput (batch 32 and 1) of every
          configuration, interleaved rounds on random inputs (tools.bench); the same for every
          task (one input size, ten classes); run it on a quiet machine
  report  results.json, results.md (suite means, paired tests) and frontier.png

--jobs N: N runs at a time, each its own process of one thread (several on one GPU, or one per
core): units of a task and a configuration, in two stages (first the configurations that choose
their own learning rate, then those that reuse another's rate, teacher or runs). The committed
cells were made with --jobs 13 on one H200 in 544 s (gpu-run.log).

--quick: one task, four configurations (two of them recovery options), one epoch of 64 images, one seed: a smoke test of the
whole pipeline in a few minutes (written under --runs, never over the committed results).
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
import compare  # noqa: E402  (results metadata, paired verdicts, writing results)

MODEL = "vit_small_patch14_dinov2"
TASKS = ("fashion-mnist", "mnist", "animal-mnist", "cv-digits")
# name -> (method, Sparse-Tuning / reduction fields, run options). A name is the method, then its
# reduction and keep rate or ToMe r, then any other option, joined by '+'. In the order they run:
# a suite stopped early has the most important cells first.
CONFIGS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "sparse-tuning+class-attention@0.7": ("sparse-tuning", {"keep_rate": 0.7}, {}),
    "lora": ("lora", {}, {}),
    "lora+class-attention@0.7": ("lora", {"reduction": "class-attention", "keep_rate": 0.7}, {}),
    # Accuracy recovery (train's options), each with the learning rate of the run it modifies:
    "sparse-tuning+class-attention@0.7+self-distill": ("sparse-tuning", {"keep_rate": 0.7}, {"self_distill": 1.0}),
    "lora+class-attention@0.7+self-distill": ("lora", {"reduction": "class-attention", "keep_rate": 0.7},
                                              {"self_distill": 1.0}),
    # Train dense, reduce at inference: the LoRA runs (every token), evaluated with class-attention.
    "lora+class-attention@0.7+dense-trained": ("lora", {}, {"reduce_at_inference": {"keep_rate": 0.7}}),
    "sparse-tuning+class-attention@0.7+keep-random@0.5": ("sparse-tuning", {"keep_rate": 0.7},
                                                          {"keep_rate_random": 0.5}),
    # The keep rate annealed from 1 to 0.7 over the first two of the four epochs.
    "sparse-tuning+class-attention@0.7+keep-anneal@2": ("sparse-tuning", {"keep_rate": 0.7},
                                                        {"keep_rate_warmup": 2.0}),
    # Distilled from a trained run: the LoRA run (every token) of the same task and seed as teacher.
    "sparse-tuning+class-attention@0.7+teacher-lora": ("sparse-tuning", {"keep_rate": 0.7}, {"teacher_from": "lora"}),
    "lora+class-attention@0.7+teacher-lora": ("lora", {"reduction": "class-attention", "keep_rate": 0.7},
                                              {"teacher_from": "lora"}),
    "da-only": ("da-only", {}, {}),
    "linear": ("linear", {}, {}),
    "sparse-tuning+tome@r4": ("sparse-tuning", {"reduction": "tome", "tome_r": [4]}, {}),
    "full": ("full", {}, {}),
    # The augmentation rule of --augment auto: the same run with timm's random-resized crop and flip.
    "sparse-tuning+class-attention@0.7+crop-flip": ("sparse-tuning", {"keep_rate": 0.7}, {"augment": "crop-flip"}),
    # Last: the paper's strongest adapter baseline, beyond the list the suite's budget must hold.
    "adaptformer": ("adaptformer", {}, {}),
}
# Configurations run on some tasks only: a flip changes a digit's label (a mirrored 2 is no 2), so
# the crop-and-flip check runs where flips are label-preserving. No suite mean: it is a check of
# the augmentation rule, compared task by task with the run it modifies.
ONLY_TASKS = {"sparse-tuning+class-attention@0.7+crop-flip": ("fashion-mnist", "animal-mnist")}
FIVE_SEEDS = ("sparse-tuning+class-attention@0.7", "lora", "lora+class-attention@0.7+dense-trained")
# Chosen with the run they modify: the augmentation check reuses Sparse-Tuning's learning rate.
SAME_LR_AS = {"sparse-tuning+class-attention@0.7+crop-flip": "sparse-tuning+class-attention@0.7",
              "sparse-tuning+class-attention@0.7+self-distill": "sparse-tuning+class-attention@0.7",
              "sparse-tuning+class-attention@0.7+keep-random@0.5": "sparse-tuning+class-attention@0.7",
              "sparse-tuning+class-attention@0.7+keep-anneal@2": "sparse-tuning+class-attention@0.7",
              "sparse-tuning+class-attention@0.7+teacher-lora": "sparse-tuning+class-attention@0.7",
              "lora+class-attention@0.7+self-distill": "lora+class-attention@0.7",
              "lora+class-attention@0.7+teacher-lora": "lora+class-attention@0.7",
              "lora+class-attention@0.7+dense-trained": "lora"}
# Configurations whose runs are another's, evaluated otherwise (no training of their own).
EVALUATES = {"lora+class-attention@0.7+dense-trained": "lora"}
LR_FACTORS = (1 / 3, 1.0, 3.0)
# bench rows (tools.bench names) for each configuration's cost; None: the cost of another's
BENCH_ROW = {"sparse-tuning+class-attention@0.7": "sparse-tuning", "lora": "lora", "da-only": "da-only",
             "linear": "linear", "lora+class-attention@0.7": "lora+class-attention",
             "sparse-tuning+tome@r4": "sparse-tuning+tome", "full": "full", "adaptformer": "adaptformer",
             "sparse-tuning+class-attention@0.7+crop-flip": "sparse-tuning",
             "sparse-tuning+class-attention@0.7+self-distill": "sparse-tuning",
             "sparse-tuning+class-attention@0.7+keep-random@0.5": "sparse-tuning",
             "sparse-tuning+class-attention@0.7+keep-anneal@2": "sparse-tuning",
             "sparse-tuning+class-attention@0.7+teacher-lora": "sparse-tuning",
             "lora+class-attention@0.7+teacher-lora": "lora+class-attention",
             "lora+class-attention@0.7+self-distill": "lora+class-attention",
             "lora+class-attention@0.7+dense-trained": "lora+class-attention"}
# A distilling configuration's step also runs its teacher: the every-token model's forward, timed
# as that model's inference at the same batch and added to the step.
TEACHER_ROW = {"sparse-tuning+class-attention@0.7+self-distill": "da-only",
               "lora+class-attention@0.7+self-distill": "lora",
               "sparse-tuning+class-attention@0.7+teacher-lora": "lora",
               "lora+class-attention@0.7+teacher-lora": "lora"}
# A configuration trained like another has that one's training cost.
TRAINED_AS = {"lora+class-attention@0.7+dense-trained": "lora"}


def run_config(args: argparse.Namespace, name: str, task: str, seed: int, lr: float, split: str = "") -> Any:
    """The run of configuration ``name`` on ``task`` (``split`` "-lr": its train800 / val200 copy)."""
    from sparse_tuning.training.config import resolve_config

    method, fields, options = CONFIGS[name]
    train = {k: v for k, v in options.items() if k in TRAIN_OPTIONS}
    if "teacher_from" in options:  # the teacher's run: same task and seed (source_run trains it first)
        train["teacher"] = str(args.runs / task / options["teacher_from"] / f"seed{seed}")
    return resolve_config({
        "model": MODEL, "weights": args.weights, "img_size": args.img_size,
        "data": f"folder:{Path(args.tasks_root) / (task + split)}", "method": method,
        "sparse_tuning": dict(fields), "augment": options.get("augment", "none"),
        "train_samples": args.train_samples, "eval_samples": args.train_samples and 2 * args.train_samples,
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": lr, "weight_decay": 1e-4,
                  "seed": seed, "num_workers": 0, "log_every": 1000, "eval_batch_size": 128,
                  "eval_every": args.epochs, **train}})


TRAIN_OPTIONS = ("self_distill", "keep_rate_random", "keep_rate_warmup")


def default_lr(name: str) -> float:
    from sparse_tuning.methods import get_method

    return get_method(CONFIGS[name][0]).lr


def train_cell(args: argparse.Namespace, cell: Path, run: Path, cfg: Any) -> dict[str, Any]:
    """One run, or its recorded result: cell is the committed JSON, run the scratch folder."""
    from sparse_tuning.training.run import resume_config, train_run
    from sparse_tuning.training.run_folder import is_run_folder

    if cell.is_file():
        return json.loads(cell.read_text())
    start = time.perf_counter()
    if is_run_folder(run) and stale(run, cfg):  # a scratch run of an older protocol: trained again
        import shutil

        shutil.rmtree(run)
    device = device_name()
    if is_run_folder(run) and not (run / "results.json").is_file():
        results = train_run(resume_config(run), run, resume=True, log=lambda line: None)
    elif (run / "results.json").is_file():  # finished earlier, maybe elsewhere: where is not known here
        results = json.loads((run / "results.json").read_text())
        device = "unknown (an earlier run's results)"
    else:
        results = train_run(cfg, run, log=lambda line: None)
    record = {"top1": results["final"]["top1"], "images": results["final"]["images"], "lr": cfg.train.lr,
              "seed": cfg.train.seed, "wall_s": round(time.perf_counter() - start, 1),
              "device": device}
    cell.parent.mkdir(parents=True, exist_ok=True)
    cell.write_text(json.dumps(record, indent=1) + "\n")
    return record


def stale(run: Path, cfg: Any) -> bool:
    """The scratch run at ``run`` was trained with another config than ``cfg`` (what train fills in
    from the data, the classes and the chosen augmentation's reason, aside)."""
    from sparse_tuning.training.records import comparable_record, read_run_config

    then, now = (comparable_record(c.to_dict(), ()) for c in (read_run_config(run), cfg))
    return any(then.get(k) != v for k, v in now.items() if k not in ("num_classes", "classes"))


def device_name() -> str:
    """Where this process trains (device auto): the GPU's name, or cpu."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def source_run(args: argparse.Namespace, task: str, source: str, seed: int) -> tuple[Path, float | None]:
    """The trained run of configuration ``source`` at ``seed`` (a teacher, or a run evaluated
    otherwise), trained again where its scratch folder is gone: the same seed trains the same
    model up to the device's arithmetic. Returns it and the top-1 of a retraining (None if none)."""
    import fcntl

    run = args.runs / task / source / f"seed{seed}"
    run.parent.mkdir(parents=True, exist_ok=True)
    # --jobs: several units may need the same source run (a teacher, runs evaluated otherwise); one
    # trains it, the others wait for it and read it
    with open(run.parent / f"seed{seed}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (run / "trainable.safetensors").is_file():
            return run, None
        cfg = run_config(args, source, task, seed, chosen_lr(args, task, source))
        source_cell = args.cells / task / source / f"seed{seed}.json"
        kept = source_cell.read_text() if source_cell.is_file() else None
        source_cell.unlink(missing_ok=True)  # trained again here: the recorded result stays, the new one is noted
        try:
            return run, train_cell(args, source_cell, run, cfg)["top1"]
        finally:  # an interrupted retraining must not lose the recorded cell
            if kept is not None:
                source_cell.write_text(kept)


def evaluate_cell(args: argparse.Namespace, task: str, name: str, seed: int, lr: float) -> dict[str, Any]:
    """A trained-dense run (its own cell's run) evaluated with the reduction of ``name``."""
    from sparse_tuning.training.run import eval_run

    source = EVALUATES[name]
    run, again = source_run(args, task, source, seed)
    start = time.perf_counter()
    reduction = CONFIGS[name][2]["reduce_at_inference"]
    result = eval_run(run, keep_rate=reduction["keep_rate"], reduction="class-attention", write=False)
    record = {"top1": result["top1"], "images": result["images"], "lr": lr, "seed": seed,
              "wall_s": round(time.perf_counter() - start, 1), "device": device_name(),
              "evaluates": f"{source} seed {seed}", **({"source_trained_again_top1": again} if again is not None else {})}
    cell = args.cells / task / name / f"seed{seed}.json"
    cell.parent.mkdir(parents=True, exist_ok=True)
    cell.write_text(json.dumps(record, indent=1) + "\n")
    return record


def lr_of(name: str, factor: float) -> float:
    """``factor`` times the method's default rate, to three digits (as the cells are named)."""
    return float(f"{default_lr(name) * factor:.3g}")


def chosen_lr(args: argparse.Namespace, task: str, name: str) -> float:
    """The learning rate of a cell: three values on train800 / val200, seed 0; the best val top-1."""
    source = SAME_LR_AS.get(name, name)
    base = default_lr(source)
    tried = {}
    for factor in LR_FACTORS:
        lr = lr_of(source, factor)
        cfg = run_config(args, source, task, 0, lr, split="-lr")
        cell = args.cells / task / source / f"lr-{lr:g}.json"
        tried[lr] = train_cell(args, cell, args.runs / task / source / f"lr-{lr:g}", cfg)["top1"]
    best = max(tried.values())
    return base if tried[lr_of(source, 1.0)] == best else max(tried, key=lambda lr: (tried[lr], -lr))


def seeds_of(args: argparse.Namespace, name: str) -> list[int]:
    return list(range(args.seeds_five if name in FIVE_SEEDS else args.seeds))


def tasks_of(args: argparse.Namespace, name: str) -> list[str]:
    return [t for t in args.tasks if t in ONLY_TASKS.get(name, args.tasks)]


def stages(args: argparse.Namespace) -> list[list[tuple[str, str]]]:
    """The runs as (task, configuration) units in two stages for --jobs: first each configuration
    that chooses its own learning rate, then those that reuse another's learning rate, teacher or
    runs. Units of a stage share no run folder, so they can run at the same time."""
    def unit(name):
        return [(task, name) for task in tasks_of(args, name)]
    # longest first: five seeds before three, full fine-tuning (a backward through the backbone) early
    cost = lambda n: (len(seeds_of(args, n)) + len(LR_FACTORS)) * (2 if CONFIGS[n][0] == "full" else 1)
    first = [u for n in sorted((n for n in args.configs if n not in SAME_LR_AS), key=cost, reverse=True)
             for u in unit(n)]
    second_names = [n for n in args.configs if n in SAME_LR_AS]
    second = [u for n in second_names for u in unit(n)]
    # a source (of a learning rate, a teacher or runs) that was not asked for would be trained by
    # every unit that needs it, at the same time: it goes first, as a unit of its own
    sources = {SAME_LR_AS[n] for n in second_names} | {CONFIGS[n][2]["teacher_from"] for n in second_names
                                                     if "teacher_from" in CONFIGS[n][2]}
    first += [u for n in sorted(sources - set(args.configs)) for u in unit(n)]
    return [first, second]


def run_processes(commands: dict[str, list[str]], jobs: int, logs: Path) -> list[str]:
    """Each command (label -> argv) in a process of one thread, ``jobs`` at a time, its output to
    LOGS/LABEL.log; prints each as it ends and returns the labels that failed."""
    import os
    import subprocess
    from concurrent.futures import ThreadPoolExecutor, as_completed

    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def run(label: str) -> int:
        with open(logs / f"{label}.log", "a") as log:
            return subprocess.run(commands[label], stdout=log, stderr=subprocess.STDOUT, env=env).returncode

    failed = []
    with ThreadPoolExecutor(jobs) as pool:
        futures = {pool.submit(run, label): label for label in commands}
        for future in as_completed(futures):
            code = future.result()
            print(f"        {futures[future]}: " + ("done" if code == 0 else f"FAILED ({code}; see its log)"), flush=True)
            if code:
                failed.append(futures[future])
    return failed


def phase_runs_parallel(args: argparse.Namespace, argv: list[str]) -> None:
    """--jobs N: N processes of this script at a time, one unit (task, configuration) each, every
    process one thread (a GPU is shared by them); each unit's output goes to RUNS/logs/."""
    base = [sys.executable, str(Path(__file__).resolve()), *strip_options(argv, ("--tasks", "--configs", "--phases",
                                                                                  "--jobs"))]
    for number, stage in enumerate(stages(args), 1):
        print(f"[runs] stage {number}: {len(stage)} units, {args.jobs} at a time", flush=True)
        failed = run_processes({f"{task}.{name}": [*base, "--tasks", task, "--configs", name, "--phases", "runs",
                                                   "--jobs", "1"] for task, name in stage},  # (whatever the parent's spelling)
                               args.jobs, args.runs / "logs")
        if failed:  # a later stage reads this one's learning rates and runs: it would train them twice at once
            raise SystemExit(f"{len(failed)} units of stage {number} failed: {failed}; the next stage did not start")


def strip_options(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """``argv`` without the options ``names`` and their values (as --name value or --name=value)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in names:
            skip = True
        elif not a.startswith(tuple(n + "=" for n in names)):
            out.append(a)
    return out


def phase_runs(args: argparse.Namespace, argv: list[str]) -> None:
    if args.jobs > 1:
        return phase_runs_parallel(args, argv)
    for name in args.configs:
        for task in tasks_of(args, name):
            for seed in seeds_of(args, name):
                cell = args.cells / task / name / f"seed{seed}.json"
                if cell.is_file():
                    continue
                lr = chosen_lr(args, task, name)
                print(f"[runs] {task} {name} seed {seed} lr {lr:g}", flush=True)
                if name in EVALUATES:
                    record = evaluate_cell(args, task, name, seed, lr)
                else:
                    if "teacher_from" in CONFIGS[name][2]:
                        source_run(args, task, CONFIGS[name][2]["teacher_from"], seed)
                    cfg = run_config(args, name, task, seed, lr)
                    record = train_cell(args, cell, args.runs / task / name / f"seed{seed}", cfg)
                print(f"        top-1 {record['top1']:.2f} in {record['wall_s']:.0f} s", flush=True)


def phase_time(args: argparse.Namespace) -> None:
    from sparse_tuning.tools.bench import BenchSetup, run_bench

    out = args.cells / "timing.json"
    if out.is_file():
        return
    rows = sorted({BENCH_ROW[n] for n in args.configs} | {TEACHER_ROW[n] for n in args.configs if n in TEACHER_ROW})
    print(f"[time] {len(rows)} configurations, interleaved rounds", flush=True)
    timed = {}
    for batch in (args.batch_size, 1):
        setup = BenchSetup(model=MODEL, img_size=args.img_size, batch_size=batch, num_classes=10, keep_rate=0.7,
                           tome_r=(4,))
        timed[batch] = {r["method"]: r for r in run_bench(setup, rows, rounds=args.rounds, warmup=2, memory=False)}
    table = {row: {"gflops": timed[args.batch_size][row]["gflops"],
                   "params_trainable": timed[args.batch_size][row]["params_trainable"],
                   "train_step_s": timed[args.batch_size][row]["train_step_s"],
                   "infer_images_per_s": {"1": timed[1][row]["infer_images_per_s"],
                                          str(args.batch_size): timed[args.batch_size][row]["infer_images_per_s"]}}
             for row in rows}
    out.write_text(json.dumps({"rows": table, "batch_size": args.batch_size, "rounds": args.rounds,
                               "date": time.strftime("%Y-%m-%d")}, indent=1) + "\n")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", required=True, help="the converted backbone (benchmarks/real/backbone.py --out)")
    p.add_argument("--tasks-root", required=True, help="the tasks (tasks.py --out)")
    p.add_argument("--runs", required=True, type=Path, help="scratch folder for the training runs (not committed)")
    p.add_argument("--out", type=Path, default=HERE, help="results.json, results.md, frontier.png")
    p.add_argument("--cells", type=Path, default=HERE / "cells", help="one JSON per finished run (committed)")
    p.add_argument("--tasks", type=lambda s: s.split(","), default=list(TASKS))
    p.add_argument("--configs", type=lambda s: s.split(","), default=list(CONFIGS))
    p.add_argument("--img-size", type=int, default=112)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--train-samples", type=int, default=0, help="a class-balanced subset of the 1,000 (0: all)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per cell")
    p.add_argument("--seeds-five", type=int, default=5, help=f"seeds for {', '.join(FIVE_SEEDS)}")
    p.add_argument("--rounds", type=int, default=6, help="timed rounds per configuration")
    p.add_argument("--phases", default="runs,time,report")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time, one thread each (a GPU or many cores)")
    p.add_argument("--quick", action="store_true", help="a smoke test of every phase (see the top of this file)")


def main(argv: list[str] | None = None) -> int:
    from report import phase_report

    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    add_arguments(p)
    args = p.parse_args(argv)
    unknown = sorted(set(args.configs) - set(CONFIGS)) + sorted(set(args.tasks) - set(TASKS))
    if unknown:
        p.error(f"unknown configuration or task {unknown[0]!r}")
    if args.quick:  # everything under --runs: a smoke test never touches the committed cells
        given = lambda name: any(a == name or a.startswith(name + "=") for a in argv)
        if not given("--tasks"):  # (a --jobs unit names its own)
            args.tasks = args.tasks[:1]
        if not given("--configs"):
            args.configs = ["sparse-tuning+class-attention@0.7", "lora", "sparse-tuning+class-attention@0.7+self-distill",
                            "lora+class-attention@0.7+dense-trained"]
        args.epochs, args.train_samples, args.seeds, args.seeds_five, args.rounds = 1, 64, 1, 2, 1
        args.cells, args.out = args.runs / "cells", args.runs / "report"
    return compare.run_phases(args, argv, {"runs": phase_runs, "time": lambda a, _: phase_time(a),
                                           "report": phase_report})


if __name__ == "__main__":
    sys.exit(main())
