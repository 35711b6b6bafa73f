"""Methods: how a timm ViT is prepared for fine-tuning, and so which of its parameters train.

The training loop knows nothing of methods: it trains what has ``requires_grad``.
"""
from __future__ import annotations

from typing import Optional

import torch.nn as nn

from .api import apply
from .config import SparseTuningConfig

METHODS = ("sparse-tuning", "ts-only", "da-only")


def method_config(method: str, keep_rate: Optional[float] = None, **fields) -> Optional[SparseTuningConfig]:
    """The Sparse-Tuning config a method name stands for; None for 'dense' (the plain model)."""
    if method in ("dense", "da-only") and keep_rate is not None:
        raise ValueError(f"--keep-rate does not apply to --method {method} (it keeps every token)")
    if method == "dense":
        return None
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if method == "da-only":
        keep_rate = 1.0
    kw = {} if keep_rate is None else {"keep_rate": keep_rate}
    return SparseTuningConfig(**{**fields, **kw, "adapters": method != "ts-only"})


def prepare(model: nn.Module, method: str, config: SparseTuningConfig) -> nn.Module:
    """Apply a method in place; afterwards ``requires_grad`` marks exactly what trains."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    return apply(model, config)
