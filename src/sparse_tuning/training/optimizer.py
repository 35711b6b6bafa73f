"""AdamW's parameter groups: what decays, and what learns at its own multiple of the rate."""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from .errors import TrainingError


def param_groups(model: nn.Module, weight_decay: float, head: tuple[nn.Parameter, ...] = (),
                 head_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """AdamW's groups: weights decay, biases and norms do not; ``head``'s parameters (a task's
    new head) in groups of their own whose learning rate is ``head_lr_scale`` times the schedule's."""
    groups = {(False, True): [], (False, False): [], (True, True): [], (True, False): []}
    in_head = {id(p) for p in head}
    for p in model.parameters():
        if p.requires_grad:
            groups[(id(p) in in_head, p.ndim > 1)].append(p)
    if not any(groups.values()):
        raise TrainingError("the model has no trainable parameters")
    out = [{"params": groups[(False, True)], "weight_decay": weight_decay},
           {"params": groups[(False, False)], "weight_decay": 0.0}]
    if in_head:
        out += [{"params": groups[(True, True)], "weight_decay": weight_decay, "lr_scale": head_lr_scale},
                {"params": groups[(True, False)], "weight_decay": 0.0, "lr_scale": head_lr_scale}]
    return out
