"""Commands flops (cost of a model by name), bench (every method side by side) and sweep (one
trained run across keep rates)."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from ..core.reduction import get_rule, rule_names
from ..errors import UserError
from .options import add_model_options
from .train import add_trained_run_options


def cmd_flops(args: argparse.Namespace) -> int:
    from ..tools.flops import cost_text, model_cost

    fields = {k: getattr(args, k) for k in ("bottleneck", "sparsify_at", "merge", "reduction", "tome_r",
                                            "proportional_attention") if getattr(args, k) is not None}
    cost = model_cost(args.model, args.method, args.img_size, args.num_classes, args.keep_rate,
                      frames=args.frames, video_tokens=args.video_tokens, tubelet=args.tubelet, task=args.task, **fields)
    print(json.dumps(cost) if args.json else cost_text(cost))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from ..tools.bench import EAGER, BenchSetup, bench_meta, bench_rows, bench_table, run_accuracies, run_bench, \
        split_row, write_bench
    from ..training.devices import resolve_device

    methods = list(bench_rows()) if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.reductions:  # every method that can take one under every rule: "lora+tome" ...
        from ..methods import get_method

        rules = [r.strip() for r in args.reductions.split(",") if r.strip()]
        rows = []
        for m in methods:
            name, eager = split_row(m)
            if get_method(name).reduction == "none":
                _say(f"{name}: no reduction applies to it; measured as it is")
                rows.append(m)
                continue
            rows += [f"{name}+{r}" + (EAGER if eager else "") for r in rules]
        methods = rows
    for m in methods:
        split_row(m)
    if args.weights and not Path(args.weights).is_file():
        raise FileNotFoundError(f"weights file not found: {args.weights}")
    batch_sizes = _batch_sizes(args.batch_size)
    if len(batch_sizes) > 1 and not args.engine:
        raise UserError("several --batch-size values go with --engine (the inference engines' table)")
    setup = BenchSetup(args.model, args.img_size, batch_sizes[0], resolve_device(args.device), args.amp,
                       weights=args.weights, compile=args.compile, keep_rate=args.keep_rate,
                       tome_r=tuple(args.tome_r) if args.tome_r else (8,))
    if args.engine:
        return _bench_engines(args, setup, methods, batch_sizes)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    accuracy = run_accuracies(args.runs) if args.runs else None
    rows = run_bench(setup, methods, args.rounds, args.warmup, memory=not args.no_memory, accuracy=accuracy,
                     progress=_say)
    print(bench_table(rows))
    write_bench(args.out, bench_meta(setup, "sparse-tuning " + shlex.join(args.argv), args.rounds, args.warmup), rows)
    return 0


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise UserError(f"--batch-size {text}: expected a positive integer, or several comma-separated")
    return sizes


def _bench_engines(args: argparse.Namespace, setup, methods: list[str], batch_sizes: list[int]) -> int:
    from ..tools.bench import bench_meta, write_bench
    from ..tools.engines import check_engines, engine_table, plot_engines, run_engine_bench

    engines = [e.strip() for e in args.engine.split(",") if e.strip()]
    check_engines(engines)
    if args.compile or args.amp != "off" or args.runs:
        raise UserError("--engine times fp32 inference per engine (compiled is an engine); leave out --compile, "
                        "--amp and --runs")
    rows = run_engine_bench(setup, methods, engines, batch_sizes, args.rounds, args.warmup, args.threads,
                            progress=_say)
    print(engine_table(rows))
    import torch

    meta = {**bench_meta(setup, "sparse-tuning " + shlex.join(args.argv), args.rounds, args.warmup),
            "engines": engines, "batch_sizes": batch_sizes, "threads": torch.get_num_threads(),
            "memory": "not measured (--engine times inference only)"}
    write_bench(args.out, meta, rows, table=engine_table, draw=plot_engines)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..tools.sweep import sweep_run

    rates = [float(r) for r in args.keep_rates.split(",") if r.strip()]
    print(sweep_run(args.run, rates, args.data, args.batch_size, args.device, args.rounds, args.out, progress=_say,
                    reduction=args.reduction))
    return 0


def _say(line: str) -> None:
    """Progress of a long measurement, on stderr (stdout holds the table)."""
    print(line, file=sys.stderr, flush=True)


def add_flops_command(sub) -> None:
    from ..methods import method_names

    p = sub.add_parser("flops", help="GFLOPs, parameters and tokens per block of a model (no weights needed)")
    add_model_options(p, ["model", "img_size"], model="vit_base_patch16_224")
    p.add_argument("--num-classes", type=int, default=None, help="classifier classes (default: the model's); "
                                                                  "with --task segment, the head's")
    p.add_argument("--task", choices=("classify", "segment"), default="classify",
                   help="classify, or segment: the model with its segmentation head (needs --num-classes)")
    p.add_argument("--method", choices=method_names() + ("dense",), default="sparse-tuning", metavar="METHOD",
                   help="a method (`sparse-tuning methods` lists them), or dense: the plain model "
                        "(default: %(default)s)")
    add_model_options(p, ["keep_rate", "reduction", "tome_r", "proportional_attention", "bottleneck", "sparsify_at",
                          "merge", "frames", "video_tokens", "tubelet"], video_tokens="joint", tubelet=2)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_flops)


def add_commands(sub) -> None:
    p = sub.add_parser("bench", help="every method side by side: parameters, GFLOPs, time, memory")
    add_model_options(p, ["model", "img_size", "weights"], model="vit_base_patch16_224")
    p.add_argument("--methods", default="all", help="all (every method, then sparse-tuning with eager attention), "
                                                    "or comma-separated names; 'NAME (eager)' times NAME with "
                                                    "attention computed by hand")
    p.add_argument("--reductions", default=None, help="comma-separated token reductions (class-attention, tome, "
                                                      "random, none): every method is measured under each, as "
                                                      "rows 'METHOD+RULE'; a row may also be written so in --methods")
    add_model_options(p, ["keep_rate", "tome_r"])
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--batch-size", default="16", help="images per step (default: %(default)s); with --engine, "
                                                      "several comma-separated: 1,8,32")
    p.add_argument("--engine", default=None,
                   help="inference engines to compare instead of the training/inference table, comma-separated: "
                        "torch, compiled (torch.compile), onnxruntime, onnxruntime-int8 (dynamic int8); each method "
                        "and the plain model (dense) exported and timed at each --batch-size")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for every engine (torch and ONNX Runtime; "
                                                            "default: their own choice)")
    add_model_options(p, ["amp"], amp="off")
    p.add_argument("--rounds", type=int, default=10, help="timed rounds; the median is reported (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default: %(default)s)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurements")
    p.add_argument("--compile", action="store_true", help="torch.compile each method's model before timing it")
    p.add_argument("--runs", nargs="*", default=None, help="trained run folders (one per method) whose best "
                                                           "test top-1 joins the table, each named under it")
    p.add_argument("--out", default="bench", help="folder for bench.md/json/csv/png (default: %(default)s)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("sweep", help="one trained run across keep rates: accuracy, GFLOPs, throughput")
    add_trained_run_options(p, batch_size=32, keep_rate=False)
    p.add_argument("--data", default=None, help="data spec (default: the run's)")
    p.add_argument("--keep-rates", default="0.5,0.6,0.7,0.8,0.9,1.0", help="comma-separated (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="timed inference rounds per rate (default: %(default)s)")
    p.add_argument("--out", default=None, help="folder for sweep.md/json/png (default: the run folder)")
    keep_rules = [name for name in rule_names() if get_rule(name).has_keep_rate]
    p.add_argument("--reduction", choices=keep_rules, default=None, metavar="RULE",
                   help=f"a run trained on every token, reduced at inference by this rule: {', '.join(keep_rules)}")
    p.set_defaults(func=cmd_sweep)
