"""Adapter files: the trained weights (adapters + head) in safetensors, config as metadata.

safetensors holds tensors only, so loading a file runs no code. A file names the backbone it
was trained on; loading it onto another backbone, depth, width or config is refused before
any weight is touched, never a silent partial load.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from .api import apply, state_of, trainable_named_parameters
from .core.config import SparseTuningConfig
from .errors import UserError
from .files import atomic_write_bytes
from .hosts import host_for

FORMAT = "sparse-tuning-adapters/1"
# Config fields that change what the adapters compute: they must match on load. keep_rate is
# the runtime knob and is left as the model has it.
RUNTIME_FIELDS = ("keep_rate",)


def backbone_signature(model: nn.Module) -> dict[str, Any]:
    """What an adapter file must agree with: shapes that adapters and head depend on."""
    return host_for(model).signature(model)


def save_adapters(model: nn.Module, path: str | os.PathLike) -> None:
    """Save the trainable weights (adapters + head) and the config to a safetensors file."""
    st = state_of(model)
    host = host_for(model)
    named = list(trainable_named_parameters(model))
    tensors = {host.file_name(name): p.detach().cpu().contiguous() for name, p in named}
    written = {id(p) for _, p in named}
    others = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in written]
    if others:  # another method's weights (LoRA, prompts, a sequential adapter) would be left out
        raise UserError(f"an adapter file holds the Dense Adapters and the head; this model also trains {others[0]} "
                        f"and {len(others) - 1} more: save the whole model (a run's trainable.safetensors) instead")
    metadata = {
        "format": FORMAT,
        "config": st.config.to_json(),
        "backbone": json.dumps(backbone_signature(model), sort_keys=True),
    }
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def read_adapter_metadata(path: str | os.PathLike) -> tuple[SparseTuningConfig, dict[str, Any]]:
    """(config, backbone signature) of an adapter file, without loading its tensors."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"adapter file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path} is not a safetensors file: {e}") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} is not a Sparse-Tuning adapter file (format {meta.get('format')!r}, "
                        f"expected {FORMAT!r})")
    return SparseTuningConfig.from_dict(json.loads(meta["config"])), json.loads(meta["backbone"])


def _by_file_name(model: nn.Module) -> dict[str, nn.Parameter]:
    host = host_for(model)
    return {host.file_name(name): p for name, p in trainable_named_parameters(model)}


def meta_copy(model: nn.Module) -> nn.Module:
    """The model's structure with every parameter and buffer on the meta device: no memory."""
    memo = {id(t): (nn.Parameter(torch.empty_like(t, device="meta"), t.requires_grad)
                    if isinstance(t, nn.Parameter) else torch.empty_like(t, device="meta"))
            for t in list(model.parameters()) + list(model.buffers())}
    return copy.deepcopy(model, memo)


def check_tensors(path, params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    """The file's tensors, if their names and shapes are exactly ``params``'."""
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path} cannot be read: {e}") from None
    missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise UserError(f"{path} does not match this model's trainable weights: "
                        f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    wrong = [f"{k}: file {tuple(t.shape)}, model {tuple(params[k].shape)}"
             for k, t in tensors.items() if t.shape != params[k].shape]
    if wrong:
        raise UserError(f"{path} has weights of other shapes: " + "; ".join(wrong[:5]))
    return tensors


def load_adapters(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load an adapter file onto a backbone; returns the model.

    A plain timm ViT gets Sparse-Tuning applied with the file's config first. A model that
    already has it must have the same config (keep_rate aside) and the same backbone shape.
    """
    config, backbone = read_adapter_metadata(path)
    applied = getattr(model, "sparse_tuning", None) is not None
    if not applied:
        host_for(model).check_supported(model)
    mine = backbone_signature(model)
    # The backbone's shape, not its library ("class" is informative): a file moves between hosts.
    diff = [f"{k}: file {backbone[k]!r}, model {mine.get(k)!r}" for k in backbone
            if k != "class" and backbone[k] != mine.get(k)]
    if diff:
        raise UserError(f"{path} was saved for another backbone: " + "; ".join(diff))
    if applied:
        current, saved = state_of(model).config.to_dict(), config.to_dict()
        diff = [f"{k}: file {saved[k]!r}, model {current[k]!r}"
                for k in saved if k not in RUNTIME_FIELDS and saved[k] != current[k]]
        if diff:
            raise UserError(f"{path} was saved with another Sparse-Tuning config: " + "; ".join(diff))
    else:
        # Check the file against what applying its config would make, on a weightless copy, so
        # that a refused file leaves the model as it was (not patched, not frozen).
        check_tensors(path, _by_file_name(apply(meta_copy(model), config)))
        apply(model, config)
    params = _by_file_name(model)
    tensors = check_tensors(path, params)
    with torch.no_grad():
        for name, t in tensors.items():
            params[name].copy_(t)
    return model
