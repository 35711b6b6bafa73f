"""Semantic segmentation on a (token-reduced) ViT: a light head on restored features, and the
metrics the field reports.

The head is the linear decoder of SETR-naive and Segmenter's baseline: the last block's patch
tokens, restored to the full grid (hosts/timm_features.py) and normalised by the model's final
norm, each mapped to class logits by one linear layer (a 1x1 convolution), then upsampled
bilinearly to the input size. It is chosen for what it measures: with nothing between the
backbone and the logits, the accuracy is the backbone's and its adapters', reduced or not, and
the head adds num_classes x (C + 1) parameters. ``blocks`` takes several blocks' maps
concatenated instead (SETR-MLA's inputs), for a richer head at the same cost in tokens.

Metrics: a confusion matrix over the pixels that are not ignored (255), then per-class IoU
(intersection over union; NaN for a class absent from both prediction and truth), mIoU (the
mean over the classes present) and pixel accuracy.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.segmentation import IGNORE_INDEX
from ..errors import UserError
from ..hosts import host_for
from .devices import autocast
from .distributed import Dist, all_reduce_sum


class SegmentationModel(nn.Module):
    """A ViT (any method, any reduction) with a linear decoder on its restored block outputs."""

    def __init__(self, backbone: nn.Module, num_classes: int, blocks: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        host = host_for(backbone)
        depth = host.depth(backbone)
        self.backbone, self.blocks = backbone, tuple(blocks or (depth - 1,))
        wrong = [b for b in self.blocks if not -depth <= b < depth]
        if wrong:
            raise UserError(f"head block {wrong[0]}: the model has {depth} blocks (0-{depth - 1}, or -1 for the last)")
        self.blocks = tuple(b % depth for b in self.blocks)
        self.head = nn.Conv2d(host.width(backbone) * len(self.blocks), num_classes, kernel_size=1,
                              device=next(backbone.parameters()).device)  # beside the backbone (meta for FLOP counts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes, H, W) at the input's size."""
        maps = host_for(self.backbone).block_maps(self.backbone, x, self.blocks)
        logits = self.head(torch.cat(maps, dim=1))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Pixel cross-entropy, the ignored pixels left out."""
    return F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing)


def confusion_matrix(predicted: torch.Tensor, truth: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) counts, rows the true class, columns the predicted one, over the
    pixels whose truth is not ignored."""
    keep = truth != IGNORE_INDEX
    index = truth[keep] * num_classes + predicted[keep]
    return torch.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def segmentation_metrics(confusion: torch.Tensor) -> dict:
    """Per-class IoU (None for a class in neither truth nor prediction), mIoU over the others and
    pixel accuracy, in percent."""
    confusion = confusion.double()
    hits = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - hits
    iou = [None if u == 0 else float(100 * h / u) for h, u in zip(hits, union)]
    present = [v for v in iou if v is not None]
    return {"miou": sum(present) / len(present) if present else float("nan"),
            "pixel_accuracy": float(100 * hits.sum() / confusion.sum().clamp_min(1)),
            "iou": iou}


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, dataset, batch_size: int = 16, device: str = "cpu", amp: str = "off",
                          d: Optional[Dist] = None, num_workers: int = 0,
                          num_classes: Optional[int] = None) -> dict[str, Any]:
    """mIoU, pixel accuracy, per-class IoU and the pixel loss over the dataset; ranks split it and
    their confusion matrices are summed (every rank takes part, also one with no image), so the
    metrics are those of the whole set. ``num_classes``: the task's (default: the model's head)."""
    from torch.utils.data import DataLoader, Subset

    from ..data.images import collate_skipping, quiet_worker, worker_batches

    d = d or Dist()
    k = num_classes or getattr(getattr(model, "head", None), "out_channels", None)
    if k is None:
        raise UserError("evaluate_segmentation needs num_classes for a model without a segmentation head")
    was_training = model.training
    model.eval()
    loader = DataLoader(Subset(dataset, list(range(d.rank, len(dataset), d.world))), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=collate_skipping,
                        worker_init_fn=quiet_worker if num_workers else None)
    confusion = torch.zeros(k, k, dtype=torch.long, device=device)
    loss, pixels, images, skipped = 0.0, 0, 0, 0
    with worker_batches(loader) as batches:
        for x, masks, unread in batches:
            skipped += unread
            if x is None:
                continue
            x, masks = x.to(device), masks.to(device)
            with autocast(device, amp):
                logits = model(x)
            logits = logits.float()
            confusion += confusion_matrix(logits.argmax(1), masks, k)
            loss += F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX, reduction="sum").item()
            pixels += int((masks != IGNORE_INDEX).sum())
            images += len(x)
    model.train(was_training)
    summed = all_reduce_sum(confusion.flatten().double().tolist() + [loss, pixels, images, skipped], d, device)
    confusion = torch.tensor(summed[:k * k], dtype=torch.float64).reshape(k, k)
    loss, pixels, images, skipped = summed[k * k:]
    if not images:  # decided on the sums: every rank raises together
        raise UserError(f"no evaluation image could be read ({int(skipped)} skipped of {len(dataset)}); "
                        "check the data (--strict-data names the first bad file)")
    return {**segmentation_metrics(confusion), "loss": loss / max(pixels, 1), "images": int(images),
            "skipped": int(skipped)}


def iou_table(iou: Sequence[Optional[float]], classes: Sequence[str]) -> str:
    """Per-class IoU as a Markdown table; a class absent from both truth and prediction is '-'."""
    rows = [f"| {name} | {'-' if v is None else f'{v:.2f}'} |" for name, v in zip(classes, iou)]
    return "\n".join(["| class | IoU (%) |", "|---|---:|", *rows])


def voc_palette() -> list[int]:
    """PASCAL VOC's 256-colour palette (class i's RGB from the bits of i, spread over the high bits
    of each channel), so that a written mask reads in every VOC viewer; written here because no
    library we depend on ships it."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def write_mask(labels: torch.Tensor, path) -> None:
    """Class indices (H, W) as a palette PNG: the pixel values are the classes (as VOC's masks)."""
    import io

    import numpy as np
    from PIL import Image

    from ..files import atomic_write_bytes

    image = Image.fromarray(labels.to(torch.uint8).cpu().numpy().astype(np.uint8), mode="P")
    image.putpalette(voc_palette())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


@torch.no_grad()
def predict_masks(model: nn.Module, images: Sequence, read, classes: Sequence[str], out_dir, device: str = "cpu") -> list[dict]:
    """Each image's predicted mask, at the image's own size, written to ``out_dir/NAME.png``;
    returns per image its mask file and the share of its pixels (%) given to each class present.
    ``read(image)`` turns an RGB PIL image into the model's input (as training read it); the logits
    come at the model's input size and are upsampled to the image's."""
    from pathlib import Path

    from ..data.images import read_user_image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded = [read_user_image(path) for path in images]  # every file checked before any work
    names = [Path(path).stem for path in images]
    if len(set(names)) < len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise UserError(f"two images are named {twice}: their masks would overwrite each other in {out_dir}")
    out = []
    for path, name, image in zip(images, names, loaded):
        logits = model(read(image).unsqueeze(0).to(device))
        logits = F.interpolate(logits.float(), size=(image.height, image.width), mode="bilinear", align_corners=False)
        labels = logits.argmax(1)[0]
        target = out_dir / f"{name}.png"
        write_mask(labels, target)
        counts = torch.bincount(labels.flatten(), minlength=len(classes)).tolist()
        share = {classes[i]: round(100 * c / labels.numel(), 2) for i, c in enumerate(counts) if c}
        out.append({"image": str(path), "mask": str(target), "classes": share})
    return out
