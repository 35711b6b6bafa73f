"""Sparse-Tuning for Vision Transformers (arXiv 2405.14700).

Token sparsification keeps the most-attended tokens at a few blocks and merges the rest into
one; Dense Adapters, fed by the current tokens and by earlier adapters, adapt the frozen ViT.

The package is layered, one import direction: ``core`` (the method's math, no host model) ->
``hosts`` (the only code that reads a timm model) -> ``methods`` (one registry entry each) ->
``data``, ``training``, ``tools`` -> ``cli``. ``import sparse_tuning`` loads nothing: each name
below is imported on first use (PEP 562), so ``sparse-tuning --help`` needs no torch and the
library never loads the training or CLI code it does not use.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "SparseTuningConfig": "core.config",
    "DenseAdapter": "core.adapter",
    "apply": "api", "count_params": "api", "kept_tokens": "api", "token_sources": "api",
    "trainable_named_parameters": "api", "trainable_parameters": "api",
    "load_adapters": "adapter_io", "save_adapters": "adapter_io",
    "count_flops": "tools.flops", "flop_report": "tools.flops",
    "load_model": "tools.export",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'sparse_tuning' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and IDEs; never run
    from .adapter_io import load_adapters, save_adapters
    from .api import (apply, count_params, kept_tokens, token_sources, trainable_named_parameters,
                      trainable_parameters)
    from .core.adapter import DenseAdapter
    from .core.config import SparseTuningConfig
    from .tools.export import load_model
    from .tools.flops import count_flops, flop_report
