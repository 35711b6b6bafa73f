"""Hosts: the only code that reads a host library's model. ``host_for(model)`` finds a model's
host; ``host_named(model_name)`` the host that builds a model of that name."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..errors import UserError
from .base import Host, original_class


from .hf_host import HFHost
from .timm_host import TimmHost  # registers the small ViTs with timm too

HOSTS: tuple[Host, ...] = (TimmHost(), HFHost())  # a new host: one module implementing Host, one entry here


def all_hosts() -> tuple[Host, ...]:
    return HOSTS


def host_for(model: nn.Module) -> Host:
    """The host of a model (its own video wrapper included)."""
    for host in HOSTS:
        if host.owns(model):
            return host
    raise UserError(f"{type(model).__name__} is not " + ", nor ".join(host.serves for host in HOSTS)
                    + ": the models Sparse-Tuning serves")


def logits_of(output) -> torch.Tensor:
    """The logits of a model's output: the tensor itself (timm) or its ``.logits`` (transformers)."""
    return output if isinstance(output, torch.Tensor) else output.logits


def host_named(model_name: str) -> Host:
    """The host that builds ``model_name``; an unknown name is one line with close names."""
    for host in HOSTS:
        if host.knows(model_name):
            return host
    HOSTS[0].check_name(model_name)  # raises, with the names closest to it
    raise UserError(f"unknown model {model_name!r}")


def build_architecture(name: str, img_size: Optional[int] = None, num_classes: Optional[int] = None,
                       device: str | torch.device = "meta") -> nn.Module:
    """A model by name without weights, on the meta device by default (no memory, no time)."""
    return host_named(name).create(name, pretrained=False, img_size=img_size, num_classes=num_classes,
                                   device=device)


__all__ = ["Host", "logits_of", "all_hosts", "build_architecture", "host_for", "host_named", "original_class"]
