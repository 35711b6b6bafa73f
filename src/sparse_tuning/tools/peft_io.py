"""peft's LoRA folders, both ways, for runs on the Hugging Face host.

peft's ``register_peft_method`` accepts only names already in its own ``PeftType``, so a
third-party method cannot live inside ``PeftModel``; the folder format (``adapter_config.json``
+ ``adapter_model.safetensors``) is where the two meet. The project's ``--method lora`` is peft's
own LoRA (``inject_adapter_in_model``), so the weights are the same tensors under the same
module paths:

- ``export_peft(run, DIR)``: a ``lora`` run as a folder that ``peft.PeftModel.from_pretrained(base,
  DIR)`` loads, the trained classifier saved as peft's ``modules_to_save`` (written by peft
  itself: a PeftModel around a fresh base, given the run's weights, then ``save_pretrained``);
- ``load_peft(DIR, ...)``: a LoRA folder trained anywhere with peft, as this project's model,
  which can then take a token reduction (``reduction=``, ``keep_rate=``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from ..errors import UserError

PREFIX = "base_model.model."  # where a PeftModel keeps the wrapped model


def _check_hf_lora(cfg) -> None:
    if cfg.task != "classify":
        raise UserError("--format peft writes an image classifier (peft's modules_to_save); this run segments")
    if cfg.method != "lora" or not str(cfg.model).startswith("hf:"):
        raise UserError(f"--format peft writes a lora run on a transformers model (hf:NAME); this run is "
                        f"--method {cfg.method} on {cfg.model}")


def export_peft(run_dir: str | Path, out: str | Path) -> Path:
    """A ``lora`` run on the transformers host as a peft LoRA folder (any token reduction the run
    trained with is not part of peft's model: the folder holds the every-token model's weights)."""
    from peft import LoraConfig, get_peft_model

    from ..hosts import host_named
    from ..training.records import read_run_config
    from ..training.run import load_run

    cfg = read_run_config(run_dir)
    _check_hf_lora(cfg)
    model, cfg = load_run(run_dir)
    options = cfg.baseline
    host = host_named(cfg.model)
    base = host.create(cfg.model, pretrained=cfg.pretrained and not cfg.weights, img_size=cfg.img_size,
                       num_classes=cfg.num_classes)
    if cfg.weights:
        host.load_weights(base, cfg.weights)
    heads = [n for n in ("classifier", "cls_classifier", "distillation_classifier") if hasattr(base, n)]
    lora = LoraConfig(r=options.get("lora_rank", 8), lora_alpha=options.get("lora_alpha", 8.0),
                      target_modules=host.lora_targets(base), modules_to_save=heads)
    lora.base_model_name_or_path = cfg.model[len("hf:"):]
    peft_model = get_peft_model(base, lora)
    ours = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if not p.requires_grad:
                continue
            source = _our_name(name[len(PREFIX):])
            if source not in ours or ours[source].shape != p.shape:
                raise UserError(f"the run has no weight for peft's {name}: it is not a plain LoRA run")
            p.copy_(ours[source])
    out = Path(out)
    peft_model.save_pretrained(str(out))
    return out


def _our_name(peft_name: str) -> str:
    """peft's name of a weight inside its model as the run's model names it: LoRA layers alike,
    a modules_to_save copy (``classifier.modules_to_save.default.weight``) as the plain head."""
    return peft_name.replace(".modules_to_save.default.", ".")


def load_peft(folder: str | Path, base: Optional[str] = None, reduction: Optional[str] = None,
              keep_rate: Optional[float] = None, num_classes: Optional[int] = None) -> nn.Module:
    """A peft LoRA folder as this project's ``lora`` model on the transformers host (the base from
    ``base``, a hub id or local folder, else the folder's ``base_model_name_or_path``), with a token
    reduction if asked; returns the model in eval mode (``model.run_config`` its config)."""
    from safetensors.torch import load_file

    from ..training.config import resolve_config
    from ..training.run import build_model

    folder = Path(folder)
    config_path = folder / "adapter_config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} holds no adapter_config.json: not a peft folder")
    peft_config = json.loads(config_path.read_text())
    if peft_config.get("peft_type") != "LORA":
        raise UserError(f"{folder} is a {peft_config.get('peft_type')} folder; only LoRA is read")
    source = base or peft_config.get("base_model_name_or_path")
    if not source:
        raise UserError(f"{folder} names no base model: give base=")
    weights = load_file(str(folder / "adapter_model.safetensors"))
    heads = {k: v for k, v in weights.items() if ".lora_" not in k}
    classes = num_classes or next((v.shape[0] for k, v in heads.items() if k.endswith("weight")), None)
    if not classes:
        raise UserError(f"{folder} saves no classifier (modules_to_save): give num_classes=")
    options = {"model": f"hf:{source}", "method": "lora", "lora_rank": int(peft_config["r"]),
               "lora_alpha": float(peft_config["lora_alpha"])}
    if reduction not in (None, "none"):
        options["sparse_tuning"] = {"reduction": reduction, **({"keep_rate": keep_rate} if keep_rate else {})}
    cfg = resolve_config(options)
    cfg.num_classes, cfg.classes = classes, [str(i) for i in range(classes)]
    model = build_model(cfg, classes)
    ours = dict(model.named_parameters())
    with torch.no_grad():
        for key, tensor in weights.items():
            name = _our_name(key[len(PREFIX):] if key.startswith(PREFIX) else key)
            name = name.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight")
            if name not in ours or ours[name].shape != tensor.shape:
                raise UserError(f"{folder}: {key} has no place in {source}'s model (another architecture or rank?)")
            ours[name].copy_(tensor)
    model.run_config = cfg
    return model.eval()
