"""Commands export (deployment formats) and visualize (which tokens survive, on your images)."""
from __future__ import annotations

import argparse

from ..errors import UserError
from ..tools.options import EXPORT_FORMATS as FORMATS
from .options import add_model_options


def cmd_export(args: argparse.Namespace) -> int:
    from ..tools.export import export_run

    if args.push_to_hub and args.format != "pretrained":
        raise UserError("--push-to-hub uploads a --format pretrained folder")
    path = export_run(args.run, args.format, args.out, args.keep_rate, args.quantize)
    print(f"wrote {path}")
    if args.push_to_hub:
        from ..tools.pretrained import push_to_hub

        print(f"uploaded to {push_to_hub(path, args.push_to_hub)}")
    if args.quantize and args.check_samples:
        from ..tools.onnx_engine import quantization_check

        print(quantization_check(args.run, path, args.check_samples, args.keep_rate))
    return 0


def cmd_visualize(args: argparse.Namespace) -> int:
    from ..tools.visualize import visualize_images

    path = visualize_images(args.images, args.out, run=args.run, model=args.model, weights=args.weights,
                            img_size=args.img_size, keep_rate=args.keep_rate)
    print(f"wrote {path}")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("export", help="write a trained run for deployment")
    p.add_argument("--run", required=True, help="a trained run folder")
    p.add_argument("--format", choices=FORMATS, required=True,
                   help="onnx (needs the export extra), torchscript (traced; PyTorch deprecates TorchScript), "
                        "export (torch.export .pt2), safetensors (for load_model), pretrained (a Hub-style folder: "
                        "config.json, model.safetensors with only what trained, README.md model card), peft (a lora run on "
                        "a transformers model as peft's LoRA folder, for peft.PeftModel.from_pretrained)")
    p.add_argument("--out", required=True, help="the file to write (a new folder for --format pretrained)")
    p.add_argument("--push-to-hub", default=None, metavar="REPO",
                   help="with --format pretrained: upload the folder to this Hugging Face Hub repository")
    p.add_argument("--keep-rate", type=float, default=None, help="bake in another keep rate (default: the run's)")
    p.add_argument("--quantize", choices=("int8", "int8-static"), default=None,
                   help="with --format onnx: int8 matrix products (onnxruntime.quantization): int8 = dynamic (weights "
                        "int8, activations per batch), int8-static (activation ranges calibrated on 64 training images)")
    p.add_argument("--check-samples", type=int, default=500,
                   help="with --quantize: top-1 (or mIoU) of the int8 file vs the run's own model on this many of the "
                        "run's evaluation images, printed (0: no check; default: %(default)s)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("visualize", help="kept-token picture of your images, with a trained run or a backbone")
    p.add_argument("--run", default=None, help="a trained run folder")
    p.add_argument("--model", default=None, help="or a model name: the pre-trained backbone, nothing trained")
    add_model_options(p, ["weights", "img_size"])
    p.add_argument("images", nargs="+", help="image files, or folders of them")
    p.add_argument("--out", default=".", help="folder for kept_tokens.png (default: %(default)s)")
    p.add_argument("--keep-rate", type=float, default=None, help="share of tokens kept per step (default: the run's, "
                                                                 "or 0.7 with --model)")
    p.set_defaults(func=cmd_visualize)
