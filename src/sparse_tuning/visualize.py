"""Which tokens survived: pictures with the dropped patches greyed out, and foreground recall."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from .api import kept_tokens


def kept_masks(kept: Sequence[torch.Tensor], num_patches: int) -> np.ndarray:
    """(steps, B, num_patches) booleans: which original patches are still kept after each step.

    A patch merged into a fused token is not kept (it lives on only as part of an average).
    """
    steps = []
    for k in kept:
        B = k.shape[0]
        m = np.zeros((B, num_patches), dtype=bool)
        for b, row in enumerate(k.cpu().numpy()):
            m[b, row[row >= 0]] = True
        steps.append(m)
    return np.stack(steps) if steps else np.zeros((0, 0, num_patches), dtype=bool)


def foreground_recall(masks: np.ndarray, foreground: np.ndarray) -> list[float]:
    """Per step: kept foreground patches / foreground patches, over all images.

    masks (steps, B, P) from kept_masks; foreground (B, P) booleans.
    """
    total = foreground.sum()
    return [float((m & foreground).sum() / max(total, 1)) for m in masks]


def random_recall(keep_counts: Sequence[tuple[int, int]]) -> list[float]:
    """What a random choice keeps of any patch set: the product of k/M over the steps so far
    (about rho, rho^2, rho^3)."""
    out, share = [], 1.0
    for k, m in keep_counts:
        share *= k / m
        out.append(share)
    return out


def grey_out(image: np.ndarray, keep: np.ndarray, patch: int, scale: int = 4) -> Image.Image:
    """image (H, W, 3) uint8 with the patches not in `keep` (flattened, row-major) greyed out."""
    H, W, _ = image.shape
    out = image.astype(np.float32).copy()
    grid = keep.reshape(H // patch, W // patch)
    for r, c in zip(*np.nonzero(~grid)):
        block = out[r * patch:(r + 1) * patch, c * patch:(c + 1) * patch]
        block[:] = 0.25 * block + 0.75 * 200  # pale grey, a trace of the image left
    img = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    return img.resize((W * scale, H * scale), Image.NEAREST)


def kept_tokens_figure(images: np.ndarray, masks: np.ndarray, patch: int, path: str | Path,
                       titles: Optional[Sequence[str]] = None, scale: int = 4) -> Path:
    """A grid: one row per image, columns = the image, then after each sparsification step.

    images (B, H, W, 3) uint8; masks (steps, B, P) from kept_masks.
    """
    B, H, W, _ = images.shape
    steps = masks.shape[0]
    cell_w, cell_h, pad, head = W * scale, H * scale, 4, 16
    canvas = Image.new("RGB", ((cell_w + pad) * (steps + 1) + pad, head + (cell_h + pad) * B + pad), "white")
    draw = ImageDraw.Draw(canvas)
    titles = titles or ["image"] + [f"after step {i + 1}" for i in range(steps)]
    for j, t in enumerate(titles):
        draw.text((pad + j * (cell_w + pad), 2), t, fill="black")
    for b in range(B):
        y = head + pad + b * (cell_h + pad)
        canvas.paste(Image.fromarray(images[b]).resize((cell_w, cell_h), Image.NEAREST), (pad, y))
        for s in range(steps):
            canvas.paste(grey_out(images[b], masks[s, b], patch, scale), (pad + (s + 1) * (cell_w + pad), y))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


@torch.no_grad()
def run_and_mask(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """Forward a batch and return kept_masks for it."""
    model.eval()
    model(x)
    num_patches = model.patch_embed.num_patches if not getattr(model.patch_embed, "dynamic_img_size", False) \
        else (x.shape[-2] // model.patch_embed.patch_size[0]) * (x.shape[-1] // model.patch_embed.patch_size[1])
    return kept_masks(kept_tokens(model), num_patches)
