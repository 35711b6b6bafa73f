"""Hub-style model folders: what a trained run shares, in the Hugging Face Hub's conventions.

    DIR/config.json        the run's config (method, its options, keep rate, classes, task), the
                           backbone's name and a fingerprint of its weights
    DIR/model.safetensors  only what trained (adapters, LoRA, head): kilobytes to megabytes
    DIR/README.md          a model card: YAML metadata (library, tags, datasets, metrics) and the
                           run's results, cost (GFLOPs) and trainable parameters

``from_pretrained(DIR or REPO_ID, backbone=WEIGHTS)`` rebuilds the model on the backbone (from the
hub by its name, or a local file) and refuses, in one line, a backbone whose weights differ from
the one the folder was trained on. huggingface_hub (a dependency of transformers) downloads a
repository and uploads one (``push_to_hub``); nothing here touches the network otherwise.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Optional

import torch.nn as nn

from ..errors import UserError
from ..files import atomic_write_text

FORMAT = "sparse-tuning-pretrained/1"
LIBRARY = "sparse-tuning"
# Where a run happened, not what it is: left out of a shared folder.
LOCAL_FIELDS = ("weights", "data", "download")  # (and train.teacher, train.device): paths and machines


def backbone_fingerprint(model: nn.Module) -> str:
    """sha256 over the frozen weights (names, shapes, values) of a model: equal for the same
    backbone whatever the method added beside it."""
    digest = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda item: item[0]):
        if not p.requires_grad:
            digest.update(name.encode())
            digest.update(str(tuple(p.shape)).encode())
            digest.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def save_pretrained(run_dir: str | Path, out: str | Path, keep_rate: Optional[float] = None) -> Path:
    """A trained run as a Hub-style folder (config.json, model.safetensors, README.md)."""
    from ..training.checkpoint import save_trainable
    from ..training.run import load_run

    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; give a new folder")
    model, cfg = load_run(run_dir, keep_rate)
    if keep_rate is not None and cfg.sparse_tuning is not None:
        cfg = dataclasses.replace(cfg, sparse_tuning=dataclasses.replace(cfg.sparse_tuning, keep_rate=keep_rate))
    shared = cfg.to_dict()
    for field in LOCAL_FIELDS:
        shared.pop(field, None)
    shared["train"] = {k: v for k, v in shared["train"].items() if k not in ("teacher", "device")}
    results_path = run_dir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    config = {"library_name": LIBRARY, "format": FORMAT, "run_config": shared,
              "backbone": {"name": cfg.model, "fingerprint": backbone_fingerprint(model)},
              "data": str(cfg.data or "").partition(":")[0], "results": {k: results.get(k) for k in ("final", "best", "eval_split") if k in results}}
    out.mkdir(parents=True, exist_ok=True)
    save_trainable(model, out / "model.safetensors", {"format": FORMAT})
    atomic_write_text(out / "config.json", json.dumps(config, indent=1) + "\n")
    atomic_write_text(out / "README.md", model_card(config, model, cfg))
    return out


def model_card(config: dict[str, Any], model: nn.Module, cfg) -> str:
    """README.md: YAML metadata the Hub indexes, then what the model is, what it scored and costs."""
    from ..api import count_params
    from ..tools.flops import count_model_flops
    from ..training.tasks import backbone_of, get_task
    from ..hosts import host_for

    task = get_task(cfg.task)
    backbone = backbone_of(model)
    size = host_for(backbone).input_size(backbone)
    gflops = count_model_flops(model, (1, *size))
    total, trainable = count_params(model)
    final = (config.get("results") or {}).get("final") or {}
    metric = task.primary
    dataset = str(config.get("data") or "").partition(":")[0] or "unknown"
    pipeline = "image-segmentation" if task.name == "segment" else "image-classification"
    lines = ["---", f"library_name: {LIBRARY}", f"pipeline_tag: {pipeline}",
             "tags:", "- sparse-tuning", "- vision-transformer", "- parameter-efficient-fine-tuning",
             f"- {cfg.method}", f"base_model: {cfg.model}", "datasets:", f"- {dataset}"]
    if metric in final:
        lines += ["model-index:", f"- name: {cfg.model} + {cfg.method}", "  results:",
                  f"  - task: {{type: {pipeline}}}", f"    dataset: {{name: {dataset}, type: {dataset}}}",
                  f"    metrics: [{{type: {metric}, value: {final[metric]:.2f}}}]"]
    reduction = cfg.sparse_tuning.describe_reduction() if cfg.sparse_tuning is not None \
        and not cfg.sparse_tuning.keeps_every_token else "none (every token)"
    lines += ["---", "", f"# {cfg.model} with {cfg.method}", "",
              f"Trained with [sparse-tuning](https://pypi.org/project/sparse-tuning/) (`--method {cfg.method}`, "
              f"task `{task.name}`, {len(cfg.classes)} classes). This folder holds only what trained; the "
              f"backbone `{cfg.model}` is loaded beside it and checked against the fingerprint in config.json.", "",
              "| | |", "|---|---|", f"| token reduction | {reduction} |",
              f"| GFLOPs per image | {gflops:.2f} ({size[1]}x{size[2]}) |",
              f"| trainable parameters | {trainable:,} of {total:,} |"]
    if metric in final:
        lines.append(f"| {task.primary_label} ({(config.get('results') or {}).get('eval_split', 'eval')}, last "
                     f"epoch) | {final[metric]:.2f} |")
    lines += ["", "```python", "import sparse_tuning.tools.pretrained as pretrained", "",
              "model = pretrained.from_pretrained(\"THIS_FOLDER_OR_REPO\")  # backbone=... for local weights",
              "```", ""]
    return "\n".join(lines)


def from_pretrained(source: str | Path, backbone: Optional[str] = None, keep_rate: Optional[float] = None) -> nn.Module:
    """The model of a Hub-style folder (a local folder, or a Hub repository id downloaded with
    huggingface_hub), on ``backbone`` (local weights; default: the backbone's own hub weights)."""
    from ..api import set_keep_rate
    from ..training.checkpoint import load_trainable
    from ..training.config import RunConfig
    from ..training.run import build_model
    from ..training.tasks import backbone_of

    folder = Path(source)
    if not folder.is_dir():
        folder = _download(str(source))
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} holds no config.json: not a model folder")
    config = json.loads(config_path.read_text())
    if config.get("format") != FORMAT:
        raise UserError(f"{folder} is not a sparse-tuning model folder (format {config.get('format')!r})")
    recorded = dict(config["run_config"])
    recorded["weights"] = str(Path(backbone).resolve()) if backbone else None
    recorded["data"] = config.get("data") or None  # the data's kind: where it lives is the user's
    cfg = RunConfig.from_dict(recorded)
    model = build_model(cfg, cfg.num_classes)
    fingerprint = backbone_fingerprint(model)
    if fingerprint != config["backbone"]["fingerprint"]:
        where = backbone or f"the hub's {cfg.model}"
        raise UserError(f"the backbone ({where}) is not the one {folder} was trained on (its weights' fingerprint "
                        f"differs: {fingerprint[:12]} here, {config['backbone']['fingerprint'][:12]} recorded)")
    load_trainable(model, folder / "model.safetensors")
    if keep_rate is not None:
        set_keep_rate(backbone_of(model), keep_rate, cfg.method)
    model.run_config = cfg
    return model.eval()


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id))
    except (HFValidationError, LocalEntryNotFoundError, OSError) as e:
        raise UserError(f"{repo_id} is neither a model folder nor a Hub repository that can be fetched "
                        f"({' '.join(str(e).split())[:160]})") from None


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload a folder written by save_pretrained to the Hub (huggingface_hub's upload API);
    returns the repository's URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, exist_ok=True, private=private)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="sparse-tuning model")
    except (OSError, ValueError) as e:  # huggingface_hub's HTTP errors are OSErrors; no token, a bad id
        raise UserError(f"could not upload {folder} to {repo_id} ({' '.join(str(e).split())[:200]}); the folder "
                        "is written: huggingface-cli upload can send it later") from None
    return f"https://huggingface.co/{repo_id}"
