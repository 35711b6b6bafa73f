"""Commands export (deployment formats) and visualize (which tokens survive, on your images)."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from .export import FORMATS, export_run
from .run import load_run, pretrained_with_sparsification
from .visualize import kept_tokens_figure, run_and_mask, step_titles


def cmd_export(args: argparse.Namespace) -> int:
    path = export_run(args.run, args.format, args.out, args.keep_rate)
    print(f"wrote {path}")
    return 0


def cmd_visualize(args: argparse.Namespace) -> int:
    from .data import augment_mode, make_transforms, parse_data_spec, read_user_image

    if (args.run is None) == (args.model is None):
        raise ValueError("visualize needs --run RUN_DIR (a trained run) or --model NAME (a pre-trained backbone "
                         "with token sparsification, nothing trained), not both")
    images = [read_user_image(p) for p in args.images]  # every file checked before any work
    if args.run is not None:
        if args.weights or args.img_size:
            raise ValueError("--weights and --img-size come from the run; give them with --model instead")
        model, cfg = load_run(args.run, args.keep_rate)
        augment = augment_mode(parse_data_spec(cfg["data"]), cfg.get("augment", "auto"))
        if getattr(model, "sparse_tuning", None) is None or not model.sparse_tuning.sparsify_at:
            raise ValueError(f"visualize needs a run that sparsifies tokens; this one used --method {cfg['method']}")
    else:
        model = pretrained_with_sparsification(args.model, args.weights, args.img_size, args.keep_rate)
        augment = "full"  # evaluation transform: resize, centre crop
    _, transform = make_transforms(model, augment)
    x = torch.stack([transform(image) for image in images])
    masks = run_and_mask(model, x)
    # Show the images as the model saw them: the transformed input, un-normalised.
    from timm.data import resolve_data_config

    dc = resolve_data_config({}, model=model)
    mean, std = torch.tensor(dc["mean"]).view(1, 3, 1, 1), torch.tensor(dc["std"]).view(1, 3, 1, 1)
    shown = ((x * std + mean).clamp(0, 1) * 255).byte().permute(0, 2, 3, 1).numpy()
    patch = model.patch_embed.patch_size[0]
    titles = [f"input:\n{masks.shape[2]} patches"] + step_titles(model)
    out = kept_tokens_figure(np.ascontiguousarray(shown), masks, patch, Path(args.out) / "kept_tokens.png",
                             titles=titles, row_labels=[Path(p).name for p in args.images],
                             title=f"Tokens kept at keep rate {model.sparse_tuning.keep_rate:g}")
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

    p = sub.add_parser("visualize", help="kept-token picture of your images, with a trained run or a backbone")
    p.add_argument("--run", default=None, help="a trained run folder")
    p.add_argument("--model", default=None, help="or a timm model name: the pre-trained backbone, nothing trained")
    p.add_argument("--weights", default=None, help="with --model: local backbone weights (.safetensors, .pth, .npz)")
    p.add_argument("--img-size", type=int, default=None, help="with --model: input size (default: the model's)")
    p.add_argument("images", nargs="+")
    p.add_argument("--out", default=".", help="folder for kept_tokens.png")
    p.add_argument("--keep-rate", type=float, default=None)
    p.set_defaults(func=cmd_visualize)
