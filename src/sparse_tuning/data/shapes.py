"""A procedural image dataset for the offline demo: one small shape on a cluttered background.

The class is the kind of shape; colour, size, position and rotation vary, and so do the textured
noise and the distractor strokes around it. Every image is a pure function of (task, split,
index), so the dataset needs no storage and no download, and each image comes with the mask of
its shape (which patches are foreground).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from ..errors import UserError

TASKS = {
    "source": ("circle", "square", "triangle", "cross", "ring"),     # pre-training classes
    "target": ("diamond", "star", "tee", "hourglass", "crescent"),   # fine-tuning classes
}
SPLIT_OFFSET = {"train": 0, "test": 10_000_000}
SCALE = 4  # shapes are drawn at 4x and downsampled: smooth edges, a fractional mask


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Outline points of a shape of radius r centred at (cx, cy), rotated by angle."""
    if kind == "square":
        pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        pts = [(x * 0.8, y * 0.8) for x, y in pts]
    elif kind == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    elif kind == "diamond":
        pts = [(0, -1), (0.6, 0), (0, 1), (-0.6, 0)]
    elif kind == "star":
        pts = [((1.0 if i % 2 == 0 else 0.42) * math.cos(-math.pi / 2 + i * math.pi / 5),
                (1.0 if i % 2 == 0 else 0.42) * math.sin(-math.pi / 2 + i * math.pi / 5)) for i in range(10)]
    elif kind == "cross":
        w = 0.33
        pts = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]
    elif kind == "tee":
        w = 0.3
        pts = [(-1, -1), (1, -1), (1, -1 + 2 * w), (w, -1 + 2 * w), (w, 1), (-w, 1), (-w, -1 + 2 * w), (-1, -1 + 2 * w)]
    elif kind == "hourglass":
        pts = [(-0.8, -1), (0.8, -1), (0.12, 0), (0.8, 1), (-0.8, 1), (-0.12, 0)]
    else:
        raise UserError(kind)
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def draw_sample(kind: str, rng: np.random.Generator, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(image HxWx3 uint8, foreground mask HxW float in [0, 1]) of one shape on clutter."""
    big = size * SCALE
    # Background: muted, blurred colour noise plus fine grain, so the shape is findable but not alone.
    coarse = rng.random((size // 4, size // 4, 3))
    bg = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((big, big), Image.BICUBIC), dtype=np.float32)
    bg = 40 + 0.35 * bg + 0.25 * rng.random((big, big, 3)) * 255
    img = Image.fromarray(bg.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(2, 5)):  # distractor strokes
        x0, y0, x1, y1 = rng.random(4) * big
        draw.line([(x0, y0), (x1, y1)], fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=SCALE)
    r = rng.uniform(0.2, 0.3) * big
    cx, cy = rng.uniform(r + SCALE, big - r - SCALE, 2)
    angle = rng.uniform(-0.4, 0.4)
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    mask = Image.new("L", (big, big), 0)
    mdraw = ImageDraw.Draw(mask)
    if kind in ("circle", "ring", "crescent"):
        box = [cx - r, cy - r, cx + r, cy + r]
        mdraw.ellipse(box, fill=255)
        if kind == "ring":
            inner = r * 0.55
            mdraw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
        elif kind == "crescent":
            off = r * 0.55
            mdraw.ellipse([cx - r + off, cy - r - off * 0.3, cx + r + off, cy + r - off * 0.3], fill=0)
    else:
        mdraw.polygon(_polygon(kind, cx, cy, r, angle), fill=255)
    img.paste(Image.new("RGB", (big, big), colour), mask=mask)
    image = np.asarray(img.resize((size, size), Image.BILINEAR))
    fg = np.asarray(mask.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255
    return image, fg


class ShapesDataset(Dataset):
    """`length` images of a task; items are (normalised image tensor, label)."""

    def __init__(self, task: str, split: str, length: int, size: int = 32, seed: int = 0,
                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)) -> None:
        if task not in TASKS:
            raise UserError(f"task {task!r}: expected one of {', '.join(TASKS)}")
        self.task, self.split, self.length, self.size, self.seed = task, split, length, size, seed
        self.classes = list(TASKS[task])
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return self.length

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(image uint8 HxWx3, foreground mask HxW, label) of item i."""
        label = i % len(self.classes)
        task_id = list(TASKS).index(self.task)
        rng = np.random.default_rng([self.seed, task_id, SPLIT_OFFSET[self.split] + i])
        image, mask = draw_sample(self.classes[label], rng, self.size)
        return image, mask, label

    def __getitem__(self, i: int):
        image, _, label = self.sample(i)
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
        return (x - self.mean) / self.std, label


def patch_foreground(mask: np.ndarray, patch: int, threshold: float = 0.25) -> np.ndarray:
    """Flattened (row-major) flags of the patches whose area is at least `threshold` shape."""
    H, W = mask.shape
    cover = mask.reshape(H // patch, patch, W // patch, patch).mean(axis=(1, 3))
    return (cover >= threshold).reshape(-1)
