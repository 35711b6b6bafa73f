"""Commands train, eval, predict and vtab. Every run option is a flag derived from the run
configuration (cli/options.py), so flags and config keys cannot drift apart."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..files import atomic_write_text
from ..core.reduction import rule_names
from ..errors import UserError
from .options import add_run_options, given_run_options, option_layers, rule_help


def cmd_train(args: argparse.Namespace) -> int:
    from ..training.config import resolve_config
    from ..training.evaluate import top5_text
    from ..training.run import RESUME_CHANGES, resume_config, train_run

    if args.resume:
        changes = {k: getattr(args, f"train.{k}") for k in RESUME_CHANGES if hasattr(args, f"train.{k}")}
        others = [k for k in given_run_options(args) if k.partition(".")[2] not in changes]
        if others or args.out or args.config:
            raise UserError("--resume RUN_DIR continues a run with its own config.json; it takes no other "
                            "options than " + ", ".join("--" + c.replace("_", "-") for c in RESUME_CHANGES))
        results = train_run(resume_config(args.resume, **changes), args.resume, resume=True)
    else:
        if not args.out:
            raise UserError("train needs --out RUN_DIR (where the run is written)")
        results = train_run(resolve_config(*option_layers(args)), Path(args.out))
    if results.get("final"):
        final, best = results["final"], results["best"]
        print(f"final (epoch {final['epoch']}): top-1 {final['top1']:.2f}{top5_text(final, ' ')}; "
              f"best top-1 {best['top1']:.2f} (epoch {best['epoch']})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ..training.evaluate import top5_text
    from ..training.run import eval_run

    result = eval_run(args.run, args.data, args.keep_rate, args.device, args.batch_size, compile=args.compile,
                      reduction=args.reduction, tome_r=args.tome_r)
    tokens = result.get("reduction") or f"keep rate {result['keep_rate']}"
    print(f"{result['split']}: top-1 {result['top1']:.2f}{top5_text(result, ' ')}  ({result['images']} images, {tokens})")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ..training.run import predict_run

    preds = predict_run(args.run, args.images, args.top_k, args.keep_rate, args.device)
    text = json.dumps(preds, indent=1)
    if args.output:
        atomic_write_text(args.output, text + "\n")
    print(text)
    return 0


def cmd_vtab(args: argparse.Namespace) -> int:
    from ..tools.vtab import VTAB_TASKS, run_vtab

    tasks = VTAB_TASKS if args.tasks == "all" else tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    print(run_vtab(args.root, args.out, tasks, option_layers(args)))
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a ViT on a dataset")
    p.add_argument("--out", help="run folder to write")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run where it stopped")
    add_run_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("vtab", help="the VTAB-1K protocol: train and test every task, then the table")
    p.add_argument("--root", required=True, help="VTAB-1K root holding one folder per task")
    p.add_argument("--out", required=True, help="folder for one run per task and the table")
    p.add_argument("--tasks", default="all", help="all, or comma-separated task names")
    add_run_options(p)
    p.set_defaults(func=cmd_vtab)

    p = sub.add_parser("eval", help="top-1 / top-5 of a trained run")
    add_trained_run_options(p, batch_size=128)
    p.add_argument("--data", default=None, help="data spec (default: the run's)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model first (one compile per input size)")
    rules = [name for name in rule_names() if name != "none"]
    p.add_argument("--reduction", choices=rules, default=None, metavar="RULE",
                   help="train dense, reduce at inference: a run trained on every token, evaluated with this "
                        f"reduction (with --keep-rate, or --tome-r for tome): {rule_help(rules)}")
    p.add_argument("--tome-r", type=int, default=None, help="ToMe: tokens merged per block (with --reduction tome)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="top-k labels of images with a trained run (JSON)")
    add_trained_run_options(p)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--top-k", type=int, default=5, help="labels per image (default: %(default)s)")
    p.add_argument("--output", default=None, help="also write the JSON here")
    p.set_defaults(func=cmd_predict)


def add_trained_run_options(p: argparse.ArgumentParser, batch_size: int = 0, keep_rate: bool = True) -> None:
    """--run, --keep-rate, --device (and --batch-size) of the commands that use a trained run."""
    p.add_argument("--run", required=True, help="a trained run folder")
    if keep_rate:
        p.add_argument("--keep-rate", type=float, default=None,
                       help="another keep rate at inference, no retraining (default: the run's)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N (default: auto)")
    if batch_size:
        p.add_argument("--batch-size", type=int, default=batch_size, help="images per batch (default: %(default)s)")
