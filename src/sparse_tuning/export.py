"""Deployment formats of a trained run: ONNX, TorchScript, torch.export, and one safetensors file.

Token counts depend only on the input size, so every graph is static but for the batch
dimension, which stays dynamic.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save

from .adapter_io import atomic_write_bytes
from .baselines import merge_lora
from .config import SparseTuningConfig
from .methods import BaselineConfig, prepare
from .run import build_architecture, load_run

FORMATS = ("onnx", "torchscript", "export", "safetensors")
MODEL_FORMAT = "sparse-tuning-model/1"


def example_input(model: nn.Module, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, *model.patch_embed.img_size)


def export_model(model: nn.Module, run_config: dict[str, Any], fmt: str, out: str | Path) -> Path:
    """Write `model` (eval mode, on CPU) in `fmt`; returns the path."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = merge_lora(model.cpu().eval())
    x = example_input(model)
    if fmt == "safetensors":
        tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        meta = {"format": MODEL_FORMAT, "run_config": json.dumps(run_config)}
        atomic_write_bytes(out, save(tensors, metadata=meta))
    elif fmt == "onnx":
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.onnx.export(model, (x,), dynamic_shapes=({0: batch},), input_names=["images"],
                                    output_names=["logits"], dynamo=True)
        program.save(str(out))
    elif fmt == "export":
        batch = torch.export.Dim("batch", min=1, max=4096)
        torch.export.save(torch.export.export(model, (x,), dynamic_shapes=({0: batch},)), str(out))
    else:
        # Token counts are Python ints of the input size; the tracer warns that they become
        # constants, which is right: the graph is for this input size, any batch.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(model, x, check_trace=False)
        traced.save(str(out))
    return out


def export_run(run_dir: str | Path, fmt: str, out: str | Path, keep_rate: Optional[float] = None) -> Path:
    model, cfg = load_run(run_dir, keep_rate)
    if keep_rate is not None:
        cfg = {**cfg, "sparse_tuning": {**cfg["sparse_tuning"], "keep_rate": keep_rate}}
    return export_model(model, cfg, fmt, out)


def load_model(path: str | Path, keep_rate: Optional[float] = None) -> nn.Module:
    """A model saved with ``export --format safetensors``: backbone, adapters and head, rebuilt
    from the file alone (no hub, no run folder)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not a Sparse-Tuning model file (format {meta.get('format')!r})")
    cfg = json.loads(meta["run_config"])
    model = build_architecture(cfg["model"], cfg.get("img_size"), cfg["num_classes"], device="cpu")
    st = SparseTuningConfig.from_dict(cfg["sparse_tuning"]) if cfg["sparse_tuning"] else None
    prepare(model, cfg["method"], st, BaselineConfig(**cfg.get("baseline", {})))
    if cfg["method"] == "lora":
        merge_lora(model)
    state = load_file(str(path))
    model.load_state_dict(state, strict=True)
    if keep_rate is not None:
        model.sparse_tuning.keep_rate = keep_rate
    return model.eval()
