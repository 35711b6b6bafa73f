"""The ``sparse-tuning`` command line. User mistakes print one line and exit 2, no traceback."""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from typing import Optional, Sequence

from . import cli_bench, cli_deploy, cli_train
from .api import count_params
from .flops import flop_report
from .methods import METHODS, method_config, prepare
from .patch import check_supported
from .run import build_architecture
from .train import TrainingError

FLOPS_METHODS = METHODS + ("dense",)


def _tokens_line(tokens: Sequence[tuple[int, int]]) -> str:
    """'197 x3 | 197->140 | 140 x2 | ...': runs of equal blocks folded."""
    parts: list[str] = []
    for (n_in, n_out), run in itertools.groupby(tokens):
        count = len(list(run))
        if n_in != n_out:
            parts += [f"{n_in}->{n_out}"] * count
        else:
            parts.append(f"{n_in} x{count}" if count > 1 else f"{n_in}")
    return " | ".join(parts)


def cmd_flops(args: argparse.Namespace) -> int:
    fields = {"bottleneck": args.bottleneck}
    if args.sparsify_at is not None:
        fields["sparsify_at"] = tuple(int(i) for i in args.sparsify_at.split(",") if i)
    if args.merge is not None:
        fields["merge"] = args.merge
    config = method_config(args.method, args.keep_rate, **fields)
    model = build_architecture(args.model, args.img_size, args.num_classes)
    check_supported(model)
    size = (3, *model.patch_embed.img_size)
    if args.frames:
        return _video_flops(args, model, config)
    dense = flop_report(model, size).gflops
    if args.method != "dense":
        prepare(model, args.method, config)
    report = flop_report(model, size)
    total, trainable = count_params(model)
    if args.json:
        print(json.dumps({
            "model": args.model, "method": args.method, "img_size": list(size[1:]),
            "config": None if config is None else model.sparse_tuning.config.to_dict(),
            "gflops": report.gflops, "dense_gflops": dense,
            "params_total": total, "params_trainable": trainable,
            "tokens_per_block": [list(t) for t in report.tokens_per_block],
        }))
        return 0
    print(f"model        {args.model} at {size[1]}x{size[2]}")
    if config is not None:
        st = model.sparse_tuning
        print(f"method       {args.method}: keep_rate {config.keep_rate}, sparsify_at {st.sparsify_at}, "
              f"merge {config.merge}" + (f", bottleneck {config.bottleneck}" if config.adapters else ""))
    else:
        print(f"method       {args.method}" + (" (plain timm model)" if args.method == "dense" else ""))
    print(f"GFLOPs       {report.gflops:.2f}  ({100 * report.gflops / dense:.1f}% of dense {dense:.2f})")
    print(f"parameters   {total:,} total, {trainable:,} trainable")
    print(f"tokens       {_tokens_line(report.tokens_per_block)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, quick=args.quick)
    return 0


def _video_flops(args: argparse.Namespace, model, config) -> int:
    from .video import video_flops

    dense = video_flops(model, args.frames, args.video_tokens, args.tubelet)
    if args.method != "dense":
        prepare(model, args.method, config)
    gflops = video_flops(model, args.frames, args.video_tokens, args.tubelet)
    total, trainable = count_params(model)
    if args.json:
        print(json.dumps({"model": args.model, "method": args.method, "frames": args.frames,
                          "video_tokens": args.video_tokens, "tubelet": args.tubelet, "gflops": gflops,
                          "dense_gflops": dense, "params_total": total, "params_trainable": trainable}))
        return 0
    layout = f"{args.video_tokens} tokens" + (f", tubelet {args.tubelet}" if args.video_tokens == "joint" else "")
    print(f"model        {args.model}, {args.frames} frames ({layout})")
    print(f"method       {args.method}")
    print(f"GFLOPs       {gflops:.2f} per clip  ({100 * gflops / dense:.1f}% of dense {dense:.2f})")
    print(f"parameters   {total:,} total, {trainable:,} trainable (image model)")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparse-tuning",
        description="Sparse-Tuning for timm Vision Transformers: token sparsification + Dense Adapters.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("flops", help="GFLOPs, parameters and tokens per block of a model (no weights needed)")
    p.add_argument("--model", default="vit_base_patch16_224", help="timm model name (default: %(default)s)")
    p.add_argument("--img-size", type=int, default=None, help="input size (default: the model's)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier classes (default: the model's)")
    p.add_argument("--method", choices=FLOPS_METHODS, default="sparse-tuning")
    p.add_argument("--keep-rate", type=float, default=None, help="share of tokens kept per step (default 0.7)")
    p.add_argument("--bottleneck", type=int, default=32, help="Dense Adapter width (default: %(default)s)")
    p.add_argument("--sparsify-at", default=None, help="comma-separated 0-based blocks (default: 3,6,9 scaled)")
    p.add_argument("--merge", choices=("mean", "sum", "drop"), default=None)
    p.add_argument("--frames", type=int, default=None, help="count one video clip of this many frames")
    p.add_argument("--video-tokens", choices=("joint", "frames"), default="joint",
                   help="joint: spatio-temporal tokens; frames: each frame on its own")
    p.add_argument("--tubelet", type=int, default=2, help="frames per token in the joint layout")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_flops)
    p = sub.add_parser("demo", help="offline demo: pre-train a small ViT, fine-tune it with every method, report")
    p.add_argument("--out", default="sparse-tuning-demo", help="report folder (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a smaller run, under a minute")
    p.set_defaults(func=cmd_demo)
    cli_train.add_commands(sub)
    cli_bench.add_commands(sub)
    cli_deploy.add_commands(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = make_parser().parse_args(argv)
    args.argv = argv  # recorded by commands that write how they were run
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, TrainingError) as e:  # DataError is a ValueError
        message = str(e).strip()
        if "Original Traceback" in message:  # re-raised from a DataLoader worker: keep its last line
            message = message.splitlines()[-1].split(": ", 1)[-1]
        print(f"sparse-tuning {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
