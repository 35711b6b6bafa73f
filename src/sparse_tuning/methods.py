"""Methods: how a timm ViT is prepared for fine-tuning, and so which of its parameters train.

Each method is one small function that changes the model and declares what trains; the
training loop knows nothing of methods: it trains what has ``requires_grad``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch.nn as nn

from .api import apply, classifier_modules
from .baselines import add_deep_prompts, add_lora, add_sequential_adapters
from .config import SparseTuningConfig

SPARSE_TUNING_METHODS = ("sparse-tuning", "ts-only", "da-only")


@dataclass
class BaselineConfig:
    adapter_bottleneck: int = 64   # width of the adapter and adaptformer methods' adapters
    adapter_scale: float = 0.1     # adaptformer's scale on its adapter output
    lora_rank: int = 8             # lora: rank of the qkv update
    lora_alpha: float = 8.0        # lora: the update is scaled by alpha / rank
    prompts: int = 10              # vpt: learnable prompt tokens per block

    def __post_init__(self) -> None:
        for name in ("adapter_bottleneck", "lora_rank", "prompts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected an integer >= 1")


def _train_only(model: nn.Module, modules: Iterable[nn.Module]) -> None:
    model.requires_grad_(False)
    for m in modules:
        m.requires_grad_(True)


def _full(model, st, base):
    model.requires_grad_(True)


def _linear(model, st, base):
    _train_only(model, classifier_modules(model))


def _adapter(model, st, base):
    add_sequential_adapters(model, base.adapter_bottleneck)
    _train_only(model, [blk.adapter for blk in model.blocks] + classifier_modules(model))


def _adaptformer(model, st, base):
    # AdaptFormer is a one-input Dense Adapter beside every FFN, scaled by 0.1, with every token kept.
    apply(model, SparseTuningConfig(keep_rate=1.0, sparsify_at=(), dense_inputs=(),
                                    bottleneck=base.adapter_bottleneck, scale=base.adapter_scale))


def _lora(model, st, base):
    add_lora(model, base.lora_rank, base.lora_alpha)
    _train_only(model, [m for n, m in model.named_modules() if n.endswith(("lora_A", "lora_B"))] + classifier_modules(model))


def _vpt(model, st, base):
    add_deep_prompts(model, base.prompts)
    model.requires_grad_(False)
    model.blocks.prompts.requires_grad_(True)
    for head in classifier_modules(model):
        head.requires_grad_(True)


def _sparse_tuning(model, st, base):
    apply(model, st)


PREPARE: dict[str, Callable] = {
    "full": _full, "linear": _linear, "adapter": _adapter, "adaptformer": _adaptformer, "lora": _lora,
    "vpt": _vpt, "ts-only": _sparse_tuning, "da-only": _sparse_tuning, "sparse-tuning": _sparse_tuning,
}
METHODS = tuple(PREPARE)


def method_config(method: str, keep_rate: Optional[float] = None, **fields) -> Optional[SparseTuningConfig]:
    """The Sparse-Tuning config a method stands for; None for a method without token sparsification."""
    if method not in METHODS and method != "dense":
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if method not in SPARSE_TUNING_METHODS:
        if keep_rate is not None:
            raise ValueError(f"--keep-rate does not apply to --method {method} (it keeps every token)")
        return None
    if method == "da-only":
        if keep_rate is not None:
            raise ValueError("--keep-rate does not apply to --method da-only (it keeps every token)")
        keep_rate = 1.0
    kw = {} if keep_rate is None else {"keep_rate": keep_rate}
    return SparseTuningConfig(**{**fields, **kw, "adapters": method != "ts-only"})


def prepare(model: nn.Module, method: str, config: Optional[SparseTuningConfig] = None,
            baseline: Optional[BaselineConfig] = None) -> nn.Module:
    """Apply a method in place; afterwards ``requires_grad`` marks exactly what trains."""
    if method not in PREPARE:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if method in SPARSE_TUNING_METHODS and config is None:
        config = method_config(method)
    PREPARE[method](model, config, baseline or BaselineConfig())
    return model
