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
    from ..training.run import RESUME_CHANGES, resume_config, train_run
    from ..training.tasks import get_task

    if args.resume:
        changes = {k: getattr(args, f"train.{k}") for k in RESUME_CHANGES if hasattr(args, f"train.{k}")}
        others = [k for k in given_run_options(args) if k.partition(".")[2] not in changes]
        if others or args.out or args.config:
            raise UserError("--resume RUN_DIR continues a run with its own config.json; it takes no other "
                            "options than " + ", ".join("--" + c.replace("_", "-") for c in RESUME_CHANGES))
        cfg = resume_config(args.resume, **changes)
        results = train_run(cfg, args.resume, resume=True)
    else:
        if not args.out:
            raise UserError("train needs --out RUN_DIR (where the run is written)")
        cfg = resolve_config(*option_layers(args))
        results = train_run(cfg, Path(args.out))
    if results.get("final"):
        final, best, task = results["final"], results["best"], get_task(cfg.task)
        print(f"final (epoch {final['epoch']}): {task.text(final)}; best {task.primary_label} "
              f"{best[task.primary]:.2f} (epoch {best['epoch']})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ..training.tasks import get_task

    if _model_file(args, "eval", ("keep_rate", "reduction", "tome_r", "compile")):
        from ..tools.onnx_engine import OnnxModel, eval_file

        if not args.data:
            raise UserError("eval --model-file F.onnx needs --data SPEC (a file carries no data)")
        result = eval_file(args.model_file, args.data, args.batch_size, args.threads)
        classes = OnnxModel(args.model_file).classes
        tokens = f"keep rate {result['keep_rate']}, onnxruntime" + (
            f" {result['quantized']}" if result["quantized"] != "none" else "")
    else:
        from ..training.records import read_run_config
        from ..training.run import eval_run

        result = eval_run(args.run, args.data, args.keep_rate, args.device, args.batch_size, compile=args.compile,
                          reduction=args.reduction, tome_r=args.tome_r)
        classes = read_run_config(args.run).classes
        tokens = result.get("reduction") or f"keep rate {result['keep_rate']}"
    print(f"{result['split']}: {get_task(result['task']).text(result)}  ({result['images']} images, {tokens})")
    if "iou" in result:  # segmentation: the per-class table
        from ..training.segmentation import iou_table

        print(iou_table(result["iou"], classes))
    return 0


def _model_file(args: argparse.Namespace, command: str, run_only: tuple[str, ...]) -> bool:
    """Whether the command reads an exported file (--model-file) rather than a run (--run): one of
    the two, and none of the options that rebuild a run."""
    if (args.run is None) == (args.model_file is None):
        raise UserError(f"{command} takes a trained run (--run RUN_DIR) or an exported file (--model-file F.onnx), one of them")
    if args.model_file is not None:
        given = [name for name in run_only if getattr(args, name, None) not in (None, False)]
        if given:
            raise UserError(f"--{given[0].replace('_', '-')} rebuilds a run; an exported file is run as it was exported")
    return args.model_file is not None


def cmd_predict(args: argparse.Namespace) -> int:
    if _model_file(args, "predict", ("keep_rate",)):
        from ..tools.onnx_engine import predict_file

        preds = predict_file(args.model_file, args.images, args.top_k, args.masks, args.threads)
    elif len(args.run) > 1:  # several tasks on one backbone
        from ..tools.multitask import predict_tasks

        if args.keep_rate is not None or args.masks is not None:
            raise UserError("with several --run, each task keeps its own keep rate; --keep-rate and --masks take one run")
        names = [Path(r).name for r in args.run]
        names = names if len(set(names)) == len(names) else [str(r) for r in args.run]
        preds = predict_tasks(dict(zip(names, args.run)), args.images, args.top_k, args.device)
    else:
        args.run = args.run[0]
        from ..training.run import predict_run

        preds = predict_run(args.run, args.images, args.top_k, args.keep_rate, args.device, masks=args.masks)
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

    p = sub.add_parser("eval", help="top-1 / top-5 of a trained run (segmentation: mIoU, pixel accuracy, IoU per class)")
    add_trained_run_options(p, batch_size=128, run_required=False)
    p.add_argument("--data", default=None, help="data spec (default: the run's)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model first (one compile per input size)")
    rules = [name for name in rule_names() if name != "none"]
    p.add_argument("--reduction", choices=rules, default=None, metavar="RULE",
                   help="train dense, reduce at inference: a run trained on every token, evaluated with this "
                        f"reduction (with --keep-rate, or --tome-r for tome): {rule_help(rules)}")
    p.add_argument("--tome-r", type=int, default=None, help="ToMe: tokens merged per block (with --reduction tome)")
    add_model_file_options(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="top-k labels of images with a trained run, or their masks (JSON)")
    add_trained_run_options(p, run_required=False, several=True)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--top-k", type=int, default=5, help="labels per image (default: %(default)s)")
    p.add_argument("--masks", default=None, metavar="DIR",
                   help="a segmentation run: write each image's predicted mask here, DIR/NAME.png at the image's "
                        "size (palette PNG: pixel values are class indices, in VOC's colours)")
    p.add_argument("--output", default=None, help="also write the JSON here")
    add_model_file_options(p)
    p.set_defaults(func=cmd_predict)


def add_model_file_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-file", default=None, metavar="F.onnx",
                   help="instead of --run: a file written by export --format onnx (fp32 or --quantize int8), run in "
                        "ONNX Runtime's CPU provider with the classes and preprocessing it records (--device does "
                        "not apply to it)")
    p.add_argument("--threads", type=int, default=None, help="with --model-file: ONNX Runtime's threads (default: its "
                                                            "own choice)")


def add_trained_run_options(p: argparse.ArgumentParser, batch_size: int = 0, keep_rate: bool = True,
                            run_required: bool = True, several: bool = False) -> None:
    """--run, --keep-rate, --device (and --batch-size) of the commands that use a trained run."""
    if several:
        p.add_argument("--run", action="append", default=None,
                       help="a trained run folder; several (--run A --run B) run every task on one shared backbone")
    else:
        p.add_argument("--run", required=run_required, default=None, help="a trained run folder")
    if keep_rate:
        p.add_argument("--keep-rate", type=float, default=None,
                       help="another keep rate at inference, no retraining (default: the run's)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N (default: auto)")
    if batch_size:
        p.add_argument("--batch-size", type=int, default=batch_size, help="images per batch (default: %(default)s)")
