"""Devices and mixed precision."""
from __future__ import annotations

from contextlib import nullcontext

import torch

from ..errors import UserError


def resolve_device(device: str) -> str:
    from .config import check_device

    check_device(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but no CUDA GPU is available")
    return device


def compiled(model: torch.nn.Module, enabled: bool, backend: str = "inductor") -> torch.nn.Module:
    """torch.compile of the model where asked (the same module otherwise). Sparse-Tuning's token
    counts depend only on the input size, so a fixed input size compiles once."""
    return torch.compile(model, backend=backend) if enabled else model


def autocast(device: str, amp: str):
    if amp == "off":
        return nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
