"""Pictures of what token reduction kept, as arrays: which patches each step kept, the image
with the others greyed out, and a grid of those for a batch (the visualize command draws its
figures from them; TensorBoard logs the grid at each evaluation)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .api import kept_tokens
from .hosts import host_for

GREY = 128  # the mid grey that covers a patch that was not kept (visible on light and dark images)


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


def grey_out(image: np.ndarray, keep: np.ndarray, patch: int) -> np.ndarray:
    """image (H, W, 3) uint8 with the patches not in `keep` (flattened, row-major) greyed out."""
    H, W, _ = image.shape
    out = image.astype(np.float32).copy()
    grid = keep.reshape(H // patch, W // patch)
    for r, c in zip(*np.nonzero(~grid)):
        block = out[r * patch:(r + 1) * patch, c * patch:(c + 1) * patch]
        block[:] = 0.2 * block + 0.8 * GREY  # grey, a trace of the image left
    return out.clip(0, 255).astype(np.uint8)


@torch.no_grad()
def run_and_mask(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """Forward a batch and return kept_masks for it."""
    model.eval()
    model(x)
    ph, pw = host_for(model).patch_size(model)
    num_patches = (x.shape[-2] // ph) * (x.shape[-1] // pw)
    return kept_masks(kept_tokens(model), num_patches)


def kept_tokens_grid(model: torch.nn.Module, x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(H * B, W * (steps + 1), 3) uint8: one row per image of the batch, the image and then the
    patches kept after each step (others greyed out); x normalised with ``mean`` and ``std``."""
    masks = run_and_mask(model, x)
    ph, _ = host_for(model).patch_size(model)
    pixels = x.detach().cpu().float() * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    images = (pixels.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    rows = [np.concatenate([image] + [grey_out(image, masks[s, b], ph) for s in range(masks.shape[0])], axis=1)
            for b, image in enumerate(images)]
    return np.concatenate(rows, axis=0)
