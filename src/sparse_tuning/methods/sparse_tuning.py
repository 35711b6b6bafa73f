"""Sparse-Tuning and its two ablations: token sparsification alone (ts-only) and Dense Adapters
alone (da-only, every token kept). All three run ``sparse_tuning.apply`` with their config."""
from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, Optional

from ..errors import UserError
from .base import Method, register

if TYPE_CHECKING:
    import torch.nn as nn

    from ..core.config import SparseTuningConfig


def _config(keep_rate: Optional[float], fields: dict[str, Any], *, adapters: bool,
            every_token: str = "") -> "SparseTuningConfig":
    from ..core.config import SparseTuningConfig

    if every_token:
        if keep_rate is not None:
            raise UserError(f"--keep-rate does not apply to --method {every_token} (it keeps every token)")
        if fields.get("reduction", "none") != "none":
            raise UserError(f"--reduction does not apply to --method {every_token} (it keeps every token); "
                            "--method sparse-tuning takes any reduction")
        keep_rate = 1.0
    kw = {} if keep_rate is None else {"keep_rate": keep_rate}
    return SparseTuningConfig(**{**fields, **kw, "adapters": adapters})


def _prepare(model: "nn.Module", config: "SparseTuningConfig", options: None) -> None:
    from ..api import apply

    apply(model, config)


COMMON = dict(prepare=_prepare, saves_adapters=True)
register(Method("ts-only", "token sparsification alone: the frozen ViT keeps the most-attended tokens; "
                "only the head trains", order=70, reduces_tokens=True, lr=1e-2,
                sparse_tuning_config=partial(_config, adapters=False), **COMMON))
register(Method("da-only", "Dense Adapters alone: every token kept", order=80, reduction="none",
                sparse_tuning_config=partial(_config, adapters=True, every_token="da-only"), **COMMON))
register(Method("sparse-tuning", "the method: token sparsification + Dense Adapters (the default)", order=90,
                reduces_tokens=True, without_adapters="ts-only", sparse_tuning_config=partial(_config, adapters=True), **COMMON))
