"""What a run learns: image classification or semantic segmentation.

The training loop, ``eval`` and the run folder ask a run's ``Task`` for the four things that
differ between the two: the model around the backbone, the loss, the evaluation (and the metric
the best epoch is chosen on), and how a result reads in one line. Everything else (the
optimizer, the schedule, resume, DDP, the methods and the reductions) is the same code.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch.nn as nn

from ..errors import UserError
from .distributed import Dist

TASKS = ("classify", "segment")
SEGMENT_HEAD_LR_SCALE = 10.0


class Task:
    name: str = ""
    primary: str = ""        # the result's key the best epoch is chosen on
    primary_label: str = ""  # how that metric is written in a line

    def model(self, backbone: nn.Module, num_classes: int, head_blocks: Sequence[int] = ()) -> nn.Module:
        """The model that trains around a backbone (the method already applied to it)."""
        return backbone

    def backbone_classes(self, num_classes: int) -> int:
        """The classes of the backbone's own classifier head."""
        return num_classes

    def head(self, model: nn.Module) -> tuple[nn.Parameter, ...]:
        """The task's own new head, trained at ``head_lr_scale`` times the learning rate."""
        return ()

    def head_lr_scale(self, cfg: Any) -> float:
        return 1.0 if cfg.head_lr_scale is None else cfg.head_lr_scale

    def loss(self, cfg: Any, num_classes: int) -> tuple[Optional[Callable], Callable]:
        """(batch mixing or None, criterion(outputs, targets)) for a ``TrainConfig``."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, dataset, batch_size: int, device: str, amp: str = "off",
                 d: Optional[Dist] = None, num_workers: int = 0, num_classes: Optional[int] = None) -> dict[str, Any]:
        raise NotImplementedError

    def text(self, result: dict[str, Any], sep: str = " ") -> str:
        """'top-1 81.20 top-5 98.10' / 'mIoU 61.30, pixel accuracy 90.20'."""
        raise NotImplementedError


class Classification(Task):
    name, primary, primary_label = "classify", "top1", "top-1"

    def loss(self, cfg: Any, num_classes: int):
        if cfg.mixup > 0 or cfg.cutmix > 0:
            from timm.data import Mixup
            from timm.loss import SoftTargetCrossEntropy

            mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                          num_classes=num_classes)
            return mixup, SoftTargetCrossEntropy()
        return None, nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    def evaluate(self, model, dataset, batch_size, device, amp="off", d=None, num_workers=0, num_classes=None):
        from .evaluate import evaluate

        return evaluate(model, dataset, batch_size, device, amp, d, num_workers)

    def text(self, result, sep=" "):
        from .evaluate import top5_text

        return f"top-1 {result['top1']:.2f}{top5_text(result, sep.rstrip() or '')}"


class Segmentation(Task):
    """A linear head on the restored patch tokens (training/segmentation.py); pixel
    cross-entropy without the ignored pixels; mIoU picks the best epoch."""

    name, primary, primary_label = "segment", "miou", "mIoU"

    def model(self, backbone, num_classes, head_blocks=()):
        from .segmentation import SegmentationModel

        return SegmentationModel(backbone, num_classes, tuple(head_blocks) or None)

    def backbone_classes(self, num_classes: int) -> int:
        return 0  # the backbone's classifier is not used: none is built (nothing to train or save)

    def head(self, model: nn.Module) -> tuple[nn.Parameter, ...]:
        return tuple(model.head.parameters())

    def head_lr_scale(self, cfg: Any) -> float:
        # A decoder trained from scratch on a frozen backbone learns at a higher rate than the
        # adapters beside it (mmsegmentation's decode heads: 10x); 10 here, from the segmentation
        # benchmark's first runs, where the method's classification rate left the head unlearnt.
        return SEGMENT_HEAD_LR_SCALE if cfg.head_lr_scale is None else cfg.head_lr_scale

    def loss(self, cfg, num_classes):
        from functools import partial

        from .segmentation import segmentation_loss

        return None, partial(segmentation_loss, label_smoothing=cfg.label_smoothing)

    def evaluate(self, model, dataset, batch_size, device, amp="off", d=None, num_workers=0, num_classes=None):
        from .segmentation import evaluate_segmentation

        return evaluate_segmentation(model, dataset, batch_size, device, amp, d, num_workers, num_classes)

    def text(self, result, sep=" "):
        return f"mIoU {result['miou']:.2f}, pixel accuracy {result['pixel_accuracy']:.2f}"


_TASKS = {"classify": Classification(), "segment": Segmentation()}


def get_task(name: str) -> Task:
    if name not in _TASKS:
        raise UserError(f"task {name!r}: expected one of {', '.join(TASKS)}")
    return _TASKS[name]


def backbone_of(model: nn.Module) -> nn.Module:
    """The ViT inside a task's model (a segmentation model's backbone), or the model itself: what
    the hosts and the methods read."""
    from .segmentation import SegmentationModel

    return model.backbone if isinstance(model, SegmentationModel) else model
