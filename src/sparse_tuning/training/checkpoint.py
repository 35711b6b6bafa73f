"""Training checkpoints: only the trainable weights, never the frozen backbone; never half-written.

A checkpoint is a folder ``RUN_DIR/checkpoints/step-NNNNNNN/`` holding ``trainable.safetensors``
and ``state.pt`` (optimizer, scaler, RNG states, epoch and step). Each file is written to a
temporary name, fsynced and renamed; only then does ``checkpoints/latest.json`` (itself replaced
atomically) point at it. A crash at any moment leaves the previous checkpoint as the latest.
"""
from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ..errors import UserError
from ..files import atomic_write_bytes
from ..hosts import host_for

KEEP_LAST = 2


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))


def _to_bytes(obj: Any) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def trainable_by_name(model: nn.Module, by_file_name: bool = True) -> dict[str, nn.Parameter]:
    # The host's file names (adapter_io's: blocks.N.adapter..., head...), so a run's file does not
    # depend on the host library's version (transformers 5 renamed its layers).
    # A task's head around the backbone (segmentation) keeps its own names, the backbone's under "backbone.".
    from .tasks import backbone_of

    backbone = backbone_of(model)
    file_name = host_for(backbone).file_name if by_file_name else (lambda n: n)
    prefix = "" if backbone is model else "backbone."

    def name(n: str) -> str:
        return prefix + file_name(n[len(prefix):]) if n.startswith(prefix) else n

    return {name(n): p for n, p in model.named_parameters() if p.requires_grad}


def save_trainable(model: nn.Module, path: Path, metadata: dict[str, str]) -> None:
    """The parameters that train (by file name), atomically, in safetensors."""
    tensors = {n: p.detach().cpu().contiguous() for n, p in trainable_by_name(model).items()}
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def _renamed(name: str, params: dict[str, nn.Parameter]) -> str:
    """A name of an older run's file as the model now has it: the sequential adapter's own blocks
    (before it had one implementation) called it ``blocks.N.adapter``, now ``blocks.N.ffn_adapter``."""
    if name not in params:
        newer = re.sub(r"(blocks\.\d+)\.adapter\.", r"\1.ffn_adapter.", name, count=1)
        if newer in params:
            return newer
    return name


def load_trainable(model: nn.Module, path: Path) -> None:
    """Load what save_trainable wrote; the names and shapes must be exactly the model's."""
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path} cannot be read ({e}); the run's trained weights are damaged") from None
    params = trainable_by_name(model)
    if set(tensors) != set(params) and set(tensors) == set(trainable_by_name(model, by_file_name=False)):
        params = trainable_by_name(model, by_file_name=False)  # written with the model's own names
    tensors = {_renamed(k, params): t for k, t in tensors.items()}
    if set(tensors) != set(params) or any(tensors[k].shape != params[k].shape for k in params):
        missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
        raise UserError(f"{path} is from another model or config "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(tensors[k])


def save_checkpoint(run_dir: Path, model: nn.Module, state: dict[str, Any], step: int,
                    metadata: dict[str, str]) -> Path:
    """Write checkpoint ``step`` and make it the latest; older ones beyond KEEP_LAST are removed."""
    root = Path(run_dir) / "checkpoints"
    folder = root / f"step-{step:07d}"
    folder.mkdir(parents=True, exist_ok=True)
    save_trainable(model, folder / "trainable.safetensors", metadata)
    atomic_write_bytes(folder / "state.pt", _to_bytes(state))
    atomic_write_bytes(root / "latest.json", json.dumps({"step": step, "folder": folder.name}).encode())
    for old in sorted(root.glob("step-*"))[:-KEEP_LAST]:
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    """The checkpoint latest.json names; without a readable latest.json, the newest complete
    step-NNNNNNN folder (both files there), so a damaged pointer never restarts a run."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / "latest.json"
    name = None
    if pointer.is_file():
        try:
            name = json.loads(pointer.read_text())["folder"]
        except (ValueError, KeyError, TypeError):
            name = None
        else:
            if not (isinstance(name, str) and re.fullmatch(r"step-\d{7}", name)):
                raise UserError(f"{pointer} names {name!r}, not a checkpoint folder of this run (step-NNNNNNN)")
    if name is not None:
        return root / name
    complete = [f for f in sorted(root.glob("step-*")) if re.fullmatch(r"step-\d{7}", f.name)
                and (f / "trainable.safetensors").is_file() and (f / "state.pt").is_file()]
    return complete[-1] if complete else None


def load_checkpoint(folder: Path, model: nn.Module) -> dict[str, Any]:
    """Load trainable weights into ``model`` (names must match exactly); return the state dict."""
    load_trainable(model, folder / "trainable.safetensors")
    return torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
