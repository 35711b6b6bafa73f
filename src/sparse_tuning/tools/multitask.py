"""Many tasks on one frozen backbone: each trained run keeps its own small parts (adapters, LoRA,
prompts, head, keep rate) and every task's model reads the same backbone tensors.

Each task is its run's own model, so its outputs are the single-task model's exactly; what is
shared is the storage of the frozen weights: after the first task, a task's frozen parameter
is replaced by the first task's tensor of the same name (peft's ``base_layer`` wrapping and the
method's patches leave the names as the backbone has them), after checking that the values are
equal. Choosing a task is a dictionary lookup: there is nothing to swap.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from ..errors import UserError


def backbone_name(name: str) -> str:
    """A parameter's name as the plain backbone has it (peft keeps the wrapped layer as base_layer)."""
    return name.replace(".base_layer.", ".")


def _replace_parameter(model: nn.Module, name: str, param: nn.Parameter) -> None:
    path, _, leaf = name.rpartition(".")
    module = model.get_submodule(path) if path else model
    module._parameters[leaf] = param


def unique_bytes(models: list[nn.Module]) -> int:
    """Bytes of the parameter and buffer storage the models hold together, each tensor once."""
    seen, total = set(), 0
    for model in models:
        for t in list(model.parameters()) + list(model.buffers()):
            key = t.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()
    return total


class MultiTask:
    """Trained runs on one backbone: ``multi(x, task="pets")`` runs that task's model."""

    def __init__(self, runs: dict[str, str | Path], device: str = "cpu") -> None:
        from ..training.run import load_run

        if not runs:
            raise UserError("give at least one trained run")
        self.models: dict[str, nn.Module] = {}
        self.configs: dict[str, Any] = {}
        self.load_seconds: dict[str, float] = {}
        shared: dict[str, nn.Parameter] = {}
        first: Optional[str] = None
        for task, run in runs.items():
            start = time.perf_counter()
            model, cfg = load_run(run)
            if cfg.task != "classify" or cfg.video.frames:
                raise UserError(f"{run} is not an image classifier: the tasks share a classifying backbone")
            model.to(device).eval()
            if first is None:
                first = task
            elif (cfg.model, cfg.img_size) != (self.configs[first].model, self.configs[first].img_size):
                raise UserError(f"run {run} is on {cfg.model} at {cfg.img_size}; {runs[first]} on "
                                f"{self.configs[first].model} at {self.configs[first].img_size}: one backbone serves "
                                "the tasks")
            for name, p in list(model.named_parameters()):
                if p.requires_grad:
                    continue
                key = backbone_name(name)
                if key not in shared:
                    shared[key] = p
                elif shared[key].shape == p.shape:
                    if not torch.equal(shared[key], p):
                        raise UserError(f"run {run} was trained on other backbone weights than {runs[first]} "
                                        f"({key} differs): the tasks cannot share it")
                    _replace_parameter(model, name, shared[key])
            self.models[task], self.configs[task] = model, cfg
            self.load_seconds[task] = time.perf_counter() - start

    @property
    def tasks(self) -> list[str]:
        return list(self.models)

    def model(self, task: str) -> nn.Module:
        if task not in self.models:
            raise UserError(f"task {task!r}: this model serves {', '.join(self.models)}")
        return self.models[task]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, task: str) -> torch.Tensor:
        from ..hosts import logits_of

        return logits_of(self.model(task)(x))

    def memory(self) -> dict[str, int]:
        """Bytes held together, and what each task's model would hold alone (its own full copy)."""
        alone = {task: unique_bytes([m]) for task, m in self.models.items()}
        return {"shared_bytes": unique_bytes(list(self.models.values())), "separate_bytes": sum(alone.values())}


def predict_tasks(runs: dict[str, str | Path], images: list[str], top_k: int = 5, device: str = "cpu") -> list[dict]:
    """``predict --run A --run B``: each image through every task, one backbone in memory."""
    from ..data.images import augment_mode, make_transforms, parse_data_spec, user_image_paths
    from ..training.run import top_k_predictions

    from ..training.devices import resolve_device

    paths = user_image_paths(images)
    device = resolve_device(device)
    multi = MultiTask(runs, device)
    out: list[dict] = [{"image": str(p), "tasks": {}} for p in paths]
    for task in multi.tasks:
        model, cfg = multi.models[task], multi.configs[task]
        _, transform = make_transforms(model, augment_mode(parse_data_spec(cfg.data), cfg.augment))
        for entry, result in zip(out, top_k_predictions(model, transform, paths, cfg.classes, top_k, device)):
            entry["tasks"][task] = result["top"]
    return out
