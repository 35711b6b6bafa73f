"""Evaluation: top-1, top-5 and loss over a dataset, split across ranks."""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..data.images import collate_skipping, quiet_worker, worker_batches
from ..hosts import logits_of
from .devices import autocast
from .distributed import Dist, all_reduce_sum


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 128, device: str = "cpu", amp: str = "off",
             d: Optional[Dist] = None, num_workers: int = 0) -> dict[str, float]:
    """Top-1, top-5 and loss over the dataset; ranks split it and their sums are reduced.

    Top-5 is left out for tasks of 5 classes or fewer, where it is 100% by construction.
    """
    d = d or Dist()
    was_training = model.training
    model.eval()
    indices = list(range(d.rank, len(dataset), d.world))
    loader = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=collate_skipping,
                        worker_init_fn=quiet_worker if num_workers else None)
    sums = [0.0, 0.0, 0.0, 0.0, 0.0]  # correct@1, correct@5, loss, images, skipped
    num_classes = 0
    with worker_batches(loader) as batches:
        for images, labels, skipped in batches:
            sums[4] += skipped
            if images is None:
                continue
            images, labels = images.to(device), labels.to(device)
            with autocast(device, amp):
                logits = logits_of(model(images))
            logits = logits.float()
            num_classes = logits.shape[1]
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            sums[0] += (top[:, 0] == labels).sum().item()
            sums[1] += (top == labels[:, None]).any(dim=1).sum().item()
            sums[2] += F.cross_entropy(logits, labels, reduction="sum").item()
            sums[3] += len(labels)
    model.train(was_training)
    c1, c5, loss, n, skipped = all_reduce_sum(sums, d, device)
    if not n:
        from ..data.images import DataError

        raise DataError(f"no evaluation image could be read ({int(skipped)} skipped of {len(dataset)}); "
                        "check the data (--strict-data names the first bad file)")
    result = {"top1": 100 * c1 / n, "top5": 100 * c5 / n, "loss": loss / n, "images": int(n), "skipped": int(skipped)}
    if 0 < num_classes <= 5:
        del result["top5"]
    return result


def top5_text(result: dict[str, Any], sep: str = "") -> str:
    """', top-5 93.10' where the result has a top-5 (tasks of more than 5 classes), else ''."""
    return f"{sep} top-5 {result['top5']:.2f}" if "top5" in result else ""
