"""Full fine-tuning: every weight trains (the accuracy reference, the most expensive)."""
from __future__ import annotations

from .base import Method, register


def _prepare(model, config, options) -> None:
    model.requires_grad_(True)


register(Method("full", "full fine-tuning: every weight trains", _prepare, order=0, trains_backbone=True, lr=3e-5))
