"""Sparse-Tuning and its two ablations: token sparsification alone (ts-only) and Dense Adapters
alone (da-only, every token kept). All three run ``sparse_tuning.apply`` with their config."""
from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, Optional

from .base import Method, TrainHook, register

if TYPE_CHECKING:
    import torch.nn as nn

    from ..core.config import SparseTuningConfig


def _config(keep_rate: Optional[float], fields: dict[str, Any], *, adapters: bool,
            every_token: str = "") -> "SparseTuningConfig":
    from ..core.config import SparseTuningConfig

    if every_token:
        if keep_rate is not None:
            raise ValueError(f"--keep-rate does not apply to --method {every_token} (it keeps every token)")
        if fields.get("reduction", "none") != "none":
            raise ValueError(f"--reduction does not apply to --method {every_token} (it keeps every token); "
                             "--method sparse-tuning takes any reduction")
        keep_rate = 1.0
    kw = {} if keep_rate is None else {"keep_rate": keep_rate}
    return SparseTuningConfig(**{**fields, **kw, "adapters": adapters})


def _prepare(model: "nn.Module", config: "SparseTuningConfig", options: None) -> None:
    from ..api import apply

    apply(model, config)


def keep_rate_at(step: int, warm_steps: int, target: float) -> float:
    """EViT-style keep-rate warmup: 1 at step 0, linearly down to the target."""
    if warm_steps <= 0:
        return target
    return 1.0 - (1.0 - target) * min(1.0, step / warm_steps)


class KeepRateWarmup(TrainHook):
    """Anneals ``model.sparse_tuning.keep_rate`` from 1 to the configured rate over the first
    ``keep_rate_warmup`` epochs; evaluation and the end of training use the configured rate."""

    def __init__(self, state, warm_steps: int) -> None:
        self.state, self.warm_steps, self.target = state, warm_steps, state.keep_rate

    def before_step(self, step: int) -> None:
        self.state.keep_rate = keep_rate_at(step, self.warm_steps, self.target)

    def before_eval(self) -> None:
        self.training_rate, self.state.keep_rate = self.state.keep_rate, self.target

    def after_eval(self) -> None:
        self.state.keep_rate = self.training_rate

    def metrics(self) -> dict[str, float]:
        return {"keep_rate": self.state.keep_rate}


def keep_rate_warmup(model: "nn.Module", train_config: Any, steps_per_epoch: int) -> KeepRateWarmup:
    state = getattr(model, "sparse_tuning")
    return KeepRateWarmup(state, round(train_config.keep_rate_warmup * steps_per_epoch))


COMMON = dict(prepare=_prepare, train_hook=keep_rate_warmup, saves_adapters=True)
register(Method("ts-only", "token sparsification alone: the frozen ViT keeps the most-attended tokens; "
                "only the head trains", order=70, reduces_tokens=True, lr=1e-2,
                sparse_tuning_config=partial(_config, adapters=False), **COMMON))
register(Method("da-only", "Dense Adapters alone: every token kept", order=80, reduction="none",
                sparse_tuning_config=partial(_config, adapters=True, every_token="da-only"), **COMMON))
register(Method("sparse-tuning", "the method: token sparsification + Dense Adapters (the default)", order=90,
                reduces_tokens=True, without_adapters="ts-only", sparse_tuning_config=partial(_config, adapters=True), **COMMON))
