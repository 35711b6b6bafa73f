"""The public entry points: apply Sparse-Tuning, read what it kept, count parameters."""
from __future__ import annotations

from typing import Iterator, Optional

import torch
import torch.nn as nn

from .core.config import SparseTuningConfig
from .core.state import SparseTuningState
from .errors import UserError
from .hosts import host_for


def apply(model: nn.Module, config: Optional[SparseTuningConfig] = None) -> nn.Module:
    """Turn a ViT into a Sparse-Tuning model, in place; returns the model.

    The backbone is frozen; the Dense Adapters and the classifier head train. Backbone
    state-dict keys are unchanged, so the host's checkpoints still load into it.
    """
    config = SparseTuningConfig() if config is None else config
    if not isinstance(config, SparseTuningConfig):
        raise UserError(f"config must be a SparseTuningConfig, got {type(config).__name__}")
    config.validate()
    host_for(model).patch(model, config)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in trainable_parameters(model):
        p.requires_grad_(True)
    return model


def state_of(model: nn.Module) -> SparseTuningState:
    st = getattr(model, "sparse_tuning", None)
    if not isinstance(st, SparseTuningState):
        raise UserError("Sparse-Tuning is not applied to this model; call sparse_tuning.apply(model) first")
    return st


def classifier_modules(model: nn.Module) -> list[nn.Module]:
    """The classification head(s): DeiT's distilled models have two."""
    return host_for(model).classifier(model)


def trainable_named_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """What Sparse-Tuning trains, declared: every block's adapter and the classifier head(s)."""
    wanted = {id(p) for adapter in state_of(model).adapters() for p in adapter.parameters()}
    wanted |= {id(p) for head in classifier_modules(model) for p in head.parameters()}
    for name, p in model.named_parameters():
        if id(p) in wanted:
            yield name, p


def trainable_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    return (p for _, p in trainable_named_parameters(model))


def kept_tokens(model: nn.Module) -> list[torch.Tensor]:
    """After a forward: one LongTensor (B, k) per sparsification step, in original patch-grid
    indices (row-major over the patch grid); a kept fused token is -1."""
    return state_of(model).kept_tokens()


def token_sources(model: nn.Module) -> list[torch.Tensor]:
    """After a forward with ToMe's reduction: one LongTensor (B, num_patches) per block, the
    index (into that block's output tokens) of the token holding each original patch."""
    return state_of(model).token_sources()


def set_keep_rate(model: nn.Module, keep_rate: float, method: str = "") -> None:
    """The keep rate at inference, no retraining; refused for a model with no sparsifying block
    (one that keeps every token by construction: it has nothing the rate could change)."""
    st = getattr(model, "sparse_tuning", None)
    if st is not None and not st.config.rule.has_keep_rate and not st.config.keeps_every_token:
        raise UserError(f"--keep-rate does not apply to the {st.config.reduction} reduction, which has no keep rate "
                        f"({st.config.describe_reduction()}; its own fields in model.sparse_tuning.config change it)")
    if st is None or not st.sparsify_at:
        what = f"--method {method}" if method else "this model"
        raise UserError(f"--keep-rate applies to models that sparsify tokens, not to {what}")
    st.keep_rate = keep_rate


def token_metrics(model: nn.Module) -> dict[str, float]:
    """What the model's token reduction does now, read from the model (any method, any rule):
    ``keep_rate``, the rate its keep rule runs at (1.0 for a model that keeps every token; absent
    under a rule without one, ToMe), and after a forward ``tokens_last_block``, the share of the
    first block's input sequence that entered the last block."""
    st = getattr(host_for(model).image_model(model), "sparse_tuning", None)
    if st is None:
        return {"keep_rate": 1.0, "tokens_last_block": 1.0}
    keep_rate = st.keep_rate if st.sparsify_at else 1.0 if st.config.keeps_every_token else None
    out = {} if keep_rate is None else {"keep_rate": keep_rate}
    if st.last_tokens:
        out["tokens_last_block"] = st.last_tokens[-1][0] / st.last_tokens[0][0]
    return out


def count_params(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
