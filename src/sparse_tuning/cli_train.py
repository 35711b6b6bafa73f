"""Commands train, eval, predict and vtab. Every config field is a flag, generated from the
dataclasses so that the flags cannot drift from the fields."""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

from .config import FUSIONS, MERGES, SparseTuningConfig
from .methods import METHODS, BaselineConfig
from .run import VideoConfig, eval_run, load_config_file, predict_run, read_run_config, resolve_config, train_run
from .train import TrainConfig, top5_text
from .vtab import VTAB_TASKS, run_vtab

TOP_LEVEL = {  # option: (argparse kwargs)
    "model": dict(help="timm model name, e.g. vit_base_patch16_224.augreg_in21k"),
    "data": dict(help="folder:PATH | vtab:ROOT/TASK | cifar100:ROOT | svhn:ROOT | food101:ROOT | mnist:ROOT | "
                      "fashionmnist:ROOT | torchvision:NAME:ROOT | kinetics:ROOT | ssv2:ROOT | frames:ROOT | "
                      "videolist:TRAIN[,EVAL]"),
    "method": dict(choices=METHODS, help="what trains (default: sparse-tuning)"),
    "preset": dict(choices=("vtab", "full"), help="the paper's recipe: vtab (b=8, lr 1e-2) or full (b=32)"),
    "weights": dict(help="local backbone weights: .safetensors, .pth, .bin or Google's .npz"),
    "img_size": dict(type=int, help="input size (default: the model's); position embeddings are resampled"),
    "augment": dict(choices=("auto", "none", "crop-flip"),
                    help="training augmentation: auto (none for vtab:, crop and flip otherwise), none, crop-flip"),
    "train_samples": dict(type=int, metavar="N", help="train on a class-balanced subset of N images (seeded)"),
    "eval_samples": dict(type=int, metavar="N", help="evaluate on a class-balanced subset of N images (seeded)"),
}
CHOICES = {"fusion": FUSIONS, "merge": MERGES, "amp": ("bf16", "fp16", "off"), "video_tokens": ("joint", "frames"),
           "flip": ("auto", "on", "off")}


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _add_fields(group, cls, prefix: str) -> None:
    """One flag per dataclass field; only flags the user gives reach the config."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kw: dict[str, Any] = {"dest": f"{prefix}.{f.name}", "default": argparse.SUPPRESS}
        hint = str(hints[f.name])
        if hint == "<class 'bool'>":
            if f.default is True:
                group.add_argument("--no-" + f.name.replace("_", "-"), action="store_false", **kw)
            else:
                group.add_argument(flag, action="store_true", **kw)
            continue
        if "tuple" in hint:
            kw["type"] = _int_tuple
        elif "float" in hint:
            kw["type"] = float
        elif "int" in hint:
            kw["type"] = int
        if f.name in CHOICES:
            kw["choices"] = CHOICES[f.name]
        else:
            kw["metavar"] = f.name.upper()
        group.add_argument(flag, help=f"(default: {f.default})", **kw)


def _layers(args: argparse.Namespace) -> list[dict[str, Any]]:
    """(config file, flags) as option layers."""
    flags: dict[str, Any] = {"sparse_tuning": {}, "baseline": {}, "video": {}, "train": {}}
    for key, value in vars(args).items():
        if key.startswith(("sparse_tuning.", "baseline.", "video.", "train.")):
            section, name = key.split(".", 1)
            flags[section][name] = value
        elif key in TOP_LEVEL or key in ("pretrained", "download", "strict_data"):
            if value is not None:
                flags[key] = value
    file_layer = load_config_file(args.config) if getattr(args, "config", None) else {}
    return [file_layer, flags]


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume:
        given = [k for k, v in vars(args).items() if k not in ("command", "func", "argv", "resume", "out", "config")
                 and v not in (None,)]
        if given or args.out or args.config:
            raise ValueError("--resume RUN_DIR continues a run with its own config.json; give no other options")
        cfg = read_run_config(args.resume)
        results = train_run(cfg, args.resume, resume=True)
    else:
        if not args.out:
            raise ValueError("train needs --out RUN_DIR (where the run is written)")
        out = Path(args.out)
        if (out / "checkpoints").exists() or (out / "results.json").exists():
            raise ValueError(f"{out} already holds a run; continue it with --resume {out} or choose another --out")
        cfg = resolve_config(*_layers(args))
        results = train_run(cfg, out)
    if results.get("final"):
        final, best = results["final"], results["best"]
        print(f"final (epoch {final['epoch']}): top-1 {final['top1']:.2f}{top5_text(final, ' ')}; "
              f"best top-1 {best['top1']:.2f} (epoch {best['epoch']})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    result = eval_run(args.run, args.data, args.keep_rate, args.device, args.batch_size)
    print(f"{result['split']}: top-1 {result['top1']:.2f}{top5_text(result, ' ')}  "
          f"({result['images']} images, keep rate {result['keep_rate']})")
    name = f"eval-{result['split']}" + (f"-keep{args.keep_rate}" if args.keep_rate is not None else "")
    (Path(args.run) / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    preds = predict_run(args.run, args.images, args.top_k, args.keep_rate, args.device)
    text = json.dumps(preds, indent=1)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print(text)
    return 0


def cmd_vtab(args: argparse.Namespace) -> int:
    tasks = VTAB_TASKS if args.tasks == "all" else tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    layers = _layers(args)
    table = run_vtab(args.root, args.out, tasks, layers)
    print(table)
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a timm ViT on a dataset")
    p.add_argument("--out", help="run folder to write")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run where it stopped")
    _add_run_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("vtab", help="the VTAB-1K protocol: train and test every task, then the table")
    p.add_argument("--root", required=True, help="VTAB-1K root holding one folder per task")
    p.add_argument("--out", required=True, help="folder for one run per task and the table")
    p.add_argument("--tasks", default="all", help="all, or comma-separated task names")
    _add_run_options(p)
    p.set_defaults(func=cmd_vtab)

    p = sub.add_parser("eval", help="top-1 / top-5 of a trained run")
    p.add_argument("--run", required=True)
    p.add_argument("--data", default=None, help="data spec (default: the run's)")
    p.add_argument("--keep-rate", type=float, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=128)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="top-k labels of images with a trained run (JSON)")
    p.add_argument("--run", required=True)
    p.add_argument("images", nargs="+")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--keep-rate", type=float, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--output", default=None, help="also write the JSON here")
    p.set_defaults(func=cmd_predict)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML or JSON file of options; flags override it")
    for name, kw in TOP_LEVEL.items():
        p.add_argument("--" + name.replace("_", "-"), default=None, **kw)
    p.add_argument("--pretrained", dest="pretrained", action="store_true", default=None,
                   help="load the timm model's pre-trained weights from the hub (the default)")
    p.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                   help="random backbone (for tests and smoke runs)")
    p.add_argument("--download", action="store_true", default=None, help="download torchvision datasets")
    p.add_argument("--strict-data", action="store_true", default=None, help="fail on unreadable images")
    _add_fields(p.add_argument_group("Sparse-Tuning"), SparseTuningConfig, "sparse_tuning")
    _add_fields(p.add_argument_group("other methods (--method adapter|adaptformer|lora|vpt)"), BaselineConfig, "baseline")
    _add_fields(p.add_argument_group("video (kinetics:, ssv2:, frames:, videolist: data)"), VideoConfig, "video")
    _add_fields(p.add_argument_group("training"), TrainConfig, "train")
