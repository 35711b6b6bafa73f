"""Commands export (deployment formats) and visualize (which tokens survive, on your images)."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from .export import FORMATS, export_run
from .run import load_run
from .visualize import kept_tokens_figure, run_and_mask


def cmd_export(args: argparse.Namespace) -> int:
    path = export_run(args.run, args.format, args.out, args.keep_rate)
    print(f"wrote {path}")
    return 0


def cmd_visualize(args: argparse.Namespace) -> int:
    from .data import make_transforms, parse_data_spec, rgb_loader

    for path in args.images:
        if not Path(path).is_file():
            raise FileNotFoundError(f"image not found: {path}")
    model, cfg = load_run(args.run, args.keep_rate)
    if getattr(model, "sparse_tuning", None) is None or not model.sparse_tuning.sparsify_at:
        raise ValueError(f"visualize needs a run that sparsifies tokens; this one used --method {cfg['method']}")
    _, transform = make_transforms(model, parse_data_spec(cfg["data"]).augment)
    x = torch.stack([transform(rgb_loader(p)) for p in args.images])
    masks = run_and_mask(model, x)
    # Show the images as the model saw them: the transformed input, un-normalised.
    from timm.data import resolve_data_config

    dc = resolve_data_config({}, model=model)
    mean, std = torch.tensor(dc["mean"]).view(1, 3, 1, 1), torch.tensor(dc["std"]).view(1, 3, 1, 1)
    shown = ((x * std + mean).clamp(0, 1) * 255).byte().permute(0, 2, 3, 1).numpy()
    patch = model.patch_embed.patch_size[0]
    scale = max(1, 256 // shown.shape[1])
    out = kept_tokens_figure(np.ascontiguousarray(shown), masks, patch, Path(args.out) / "kept_tokens.png", scale=scale)
    print(f"wrote {out}")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("export", help="write a trained run for deployment")
    p.add_argument("--run", required=True)
    p.add_argument("--format", choices=FORMATS, required=True,
                   help="onnx, torchscript (traced), export (torch.export .pt2), safetensors (for load_model)")
    p.add_argument("--out", required=True)
    p.add_argument("--keep-rate", type=float, default=None, help="bake in another keep rate")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("visualize", help="kept-token picture of your images with a trained run")
    p.add_argument("--run", required=True)
    p.add_argument("images", nargs="+")
    p.add_argument("--out", default=".", help="folder for kept_tokens.png")
    p.add_argument("--keep-rate", type=float, default=None)
    p.set_defaults(func=cmd_visualize)
