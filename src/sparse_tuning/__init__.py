"""Sparse-Tuning for timm Vision Transformers (arXiv 2405.14700).

Token sparsification keeps the most-attended tokens at a few blocks and merges the rest into
one; Dense Adapters, fed by the current tokens and by earlier adapters, adapt the frozen ViT.
"""
from .adapter import DenseAdapter
from .adapter_io import load_adapters, save_adapters
from .api import apply, count_params, kept_tokens, trainable_named_parameters, trainable_parameters
from .config import SparseTuningConfig
from .export import load_model
from .flops import count_flops, flop_report
from . import models  # noqa: F401  (registers the small ViTs with timm)

__version__ = "0.1.0"

__all__ = [
    "DenseAdapter", "SparseTuningConfig", "apply", "count_flops", "count_params", "flop_report",
    "kept_tokens", "load_adapters", "load_model", "save_adapters", "trainable_named_parameters", "trainable_parameters",
]
