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

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.segmentation import IGNORE_INDEX
from ..hosts import host_for


class SegmentationModel(nn.Module):
    """A ViT (any method, any reduction) with a linear decoder on its restored block outputs."""

    def __init__(self, backbone: nn.Module, num_classes: int, blocks: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        host = host_for(backbone)
        self.backbone, self.blocks = backbone, tuple(blocks or (host.depth(backbone) - 1,))
        self.head = nn.Conv2d(host.width(backbone) * len(self.blocks), num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes, H, W) at the input's size."""
        maps = host_for(self.backbone).block_maps(self.backbone, x, self.blocks)
        logits = self.head(torch.cat(maps, dim=1))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Pixel cross-entropy, the ignored pixels left out."""
    return F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX)


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
