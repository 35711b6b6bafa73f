"""Hosts: the only code that reads a host library's model. ``host_for(model)`` finds a model's
host; ``host_named(model_name)`` the host that builds a model of that name."""
from __future__ import annotations

from functools import lru_cache
from typing import Optional

import torch
import torch.nn as nn

from .base import Host, original_class


@lru_cache(maxsize=None)
def all_hosts() -> tuple[Host, ...]:
    from .timm_host import TimmHost

    return (TimmHost(),)


def host_for(model: nn.Module) -> Host:
    """The host of a model (a video wrapper answers for its image model: ``model.vit``)."""
    model = getattr(model, "vit", model)
    for host in all_hosts():
        if host.owns(model):
            return host
    raise ValueError(f"{type(model).__name__} is not a timm VisionTransformer, the model Sparse-Tuning serves "
                     "(timm.models.vision_transformer.VisionTransformer or a subclass such as DeiT's)")


def host_named(model_name: str) -> Host:
    """The host that builds ``model_name`` (every name is a timm name today)."""
    return all_hosts()[0]


def build_architecture(name: str, img_size: Optional[int] = None, num_classes: Optional[int] = None,
                       device: str | torch.device = "meta") -> nn.Module:
    """A model by name without weights, on the meta device by default (no memory, no time)."""
    return host_named(name).create(name, pretrained=False, img_size=img_size, num_classes=num_classes,
                                   device=device)


__all__ = ["Host", "all_hosts", "build_architecture", "host_for", "host_named", "original_class"]
