"""A run: a resolved config, a model built from it, a run folder. Glue between CLI and library.

RUN_DIR holds config.json (everything needed to rebuild the model), metrics.jsonl,
checkpoints/, trainable.safetensors (what the method trained: adapters + head for Sparse-Tuning),
adapters.safetensors (Sparse-Tuning methods: the portable adapter file) and results.json.
"""
from __future__ import annotations

import copy
import difflib
import os
import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from .adapter_io import atomic_write_bytes, save_adapters
from .checkpoint import load_trainable, save_trainable
from .config import SparseTuningConfig
from .data import AUGMENTS, augment_mode, load_image_data, parse_data_spec
from .methods import METHODS, SPARSE_TUNING_METHODS, BaselineConfig, method_config, prepare
from .train import TrainConfig, evaluate, resolve_device, train
from .video import VideoViT
from .video_data import VIDEO_KINDS, VideoOptions, defaults_for, load_video_data


@dataclasses.dataclass
class VideoConfig:
    frames: int = 0                 # frames per clip; 0 for image data
    video_tokens: str = "joint"     # joint (spatio-temporal tokens) or frames (each frame alone)
    tubelet: int = 2                # frames per token in the joint layout
    sampling_rate: int = 4          # dense sampling (Kinetics): every n-th frame
    test_clips: int = 0             # temporal test views; 0: the dataset's default (K400 5, SSv2 2)
    test_crops: int = 0             # spatial test views; 0: the dataset's default (3)
    flip: str = "auto"              # training flip: auto (off for SSv2), on, off

    def __post_init__(self) -> None:
        if self.video_tokens not in ("joint", "frames"):
            raise ValueError(f"video_tokens={self.video_tokens!r}: expected joint or frames")
        if self.flip not in ("auto", "on", "off"):
            raise ValueError(f"flip={self.flip!r}: expected auto, on or off")
        if self.frames < 0 or self.tubelet < 1 or self.sampling_rate < 1:
            raise ValueError("frames must be >= 0, tubelet and sampling_rate >= 1")

# Preset overrides: the paper's VTAB-1K recipe and its complete-dataset one.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "vtab": {"train": {"epochs": 100, "lr": 1e-2, "min_lr": 0.0, "warmup_epochs": 10, "weight_decay": 1e-4,
                       "batch_size": 64},
             "sparse_tuning": {"bottleneck": 8}},
    "full": {"train": {"epochs": 100, "lr": 1e-3, "min_lr": 1e-6, "warmup_epochs": 10, "weight_decay": 5e-2,
                       "batch_size": 64},
             "sparse_tuning": {"bottleneck": 32}},
}

DEFAULTS: dict[str, Any] = {
    "model": None, "data": None, "method": "sparse-tuning", "pretrained": True, "weights": None,
    "img_size": None, "download": False, "strict_data": False, "preset": None,
    "augment": "auto", "train_samples": 0, "eval_samples": 0,
    "sparse_tuning": {}, "baseline": {}, "video": {}, "train": {},
}


def resolve_config(*layers: dict[str, Any]) -> dict[str, Any]:
    """Merge option layers (defaults < preset < config file < flags), validated; nested dicts merge."""
    out = copy.deepcopy(DEFAULTS)
    for layer in layers:
        for key, value in layer.items():
            if key not in out:
                raise ValueError(f"unknown option {key!r} in the configuration{_hint(key, out)}")
            if isinstance(out[key], dict):
                if not isinstance(value or {}, dict):
                    raise ValueError(f"option {key!r} holds a mapping of options, got {value!r}")
                fields = section_fields(key)
                for name in value or {}:
                    if name not in fields:
                        close = difflib.get_close_matches(name, fields, n=1)
                        raise ValueError(f"unknown option {name!r} under {key}:"
                                         + (f"; did you mean {close[0]!r}?" if close else ""))
                out[key].update(value or {})
            else:
                out[key] = value
    if out["preset"] is not None:
        if out["preset"] not in PRESETS:
            raise ValueError(f"preset {out['preset']!r}: expected one of {', '.join(PRESETS)}")
        # Presets sit under everything the user gave: re-merge with the preset first.
        preset = PRESETS[out["preset"]]
        out["train"] = {**preset["train"], **out["train"]}
        out["sparse_tuning"] = {**preset["sparse_tuning"], **out["sparse_tuning"]}
    if out["method"] not in METHODS:
        raise ValueError(f"method {out['method']!r}: expected one of {', '.join(METHODS)}")
    # Validate both dataclasses now, before any work.
    out["train"] = dataclasses.asdict(TrainConfig(**out["train"]))
    fields = dict(out["sparse_tuning"])
    keep = fields.pop("keep_rate", None)
    if fields.pop("adapters", True) is False and out["method"] == "sparse-tuning":
        out["method"] = "ts-only"  # --no-adapters is token sparsification alone
    config = method_config(out["method"], keep, **fields)
    out["sparse_tuning"] = config.to_dict() if config else None
    out["baseline"] = dataclasses.asdict(BaselineConfig(**out["baseline"]))
    out["video"] = dataclasses.asdict(VideoConfig(**out["video"]))
    kind = str(out["data"] or "").partition(":")[0]
    for name in ("train_samples", "eval_samples"):
        if isinstance(out[name], bool) or not isinstance(out[name], int) or out[name] < 0:
            raise ValueError(f"{name}={out[name]!r}: expected an integer >= 0 (0: every image)")
        if out[name] and kind in VIDEO_KINDS:
            raise ValueError(f"{name} takes a subset of image data; it does not apply to video data")
    if out["augment"] not in AUGMENTS:
        raise ValueError(f"augment={out['augment']!r}: expected one of {', '.join(AUGMENTS)}")
    if (kind in VIDEO_KINDS) != bool(out["video"]["frames"]):
        raise ValueError("video data (kinetics:, ssv2:, frames:, videolist:) needs --frames N, and --frames "
                         "needs video data")
    return out


def section_fields(section: str) -> list[str]:
    """The option names of a nested section, from its dataclass."""
    cls = {"train": TrainConfig, "sparse_tuning": SparseTuningConfig, "baseline": BaselineConfig,
           "video": VideoConfig}[section]
    return [f.name for f in dataclasses.fields(cls)]


def _hint(key: str, top: dict[str, Any]) -> str:
    """'; it belongs under train: (train: {epochs: ...})' or '; did you mean ...?'."""
    for section in ("train", "sparse_tuning", "baseline", "video"):
        if key in section_fields(section):
            return f"; it belongs under {section}: ({section}: {{{key}: ...}}), or give it as --{key.replace('_', '-')}"
    close = difflib.get_close_matches(key, list(top), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Options from a YAML or JSON file (keys as in config.json; dashes or underscores)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of options")
    norm = lambda d: {k.replace("-", "_"): (norm(v) if isinstance(v, dict) else v) for k, v in d.items()}
    return norm(data)


def load_weights(model: nn.Module, path: str | Path) -> None:
    """A local checkpoint into a timm ViT: .npz (Google's ViT format) or a state dict
    (.safetensors, .pth, .bin), through timm's own loaders. The classifier is kept from the file
    only when its shape fits; any other missing or mismatched key is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".npz":
        model.load_pretrained(str(path))
        return
    from timm.models import load_state_dict
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = checkpoint_filter_fn(load_state_dict(str(path)), model)
    own = model.state_dict()
    heads = {k for k in state if k.startswith(("head.", "head_dist.")) and k in own and state[k].shape != own[k].shape}
    for k in heads:
        del state[k]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state
             if k in own and state[k].shape != own[k].shape]
    if wrong:
        raise ValueError(f"{path} does not fit this model: {len(wrong)} weights of other shapes, e.g. {wrong[:3]}")
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(("head.", "head_dist.")) and ".adapter." not in k]
    if missing or result.unexpected_keys:
        raise ValueError(f"{path} does not fit this model: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")


def check_model_name(name: str) -> None:
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:5]
        hint = f"; similar: {', '.join(close)}" if close else "; `timm.list_models('vit_*')` lists them"
        raise ValueError(f"unknown timm model {name!r}{hint}")


def build_architecture(name: str, img_size: Optional[int] = None, num_classes: Optional[int] = None,
                       device: str | torch.device = "meta") -> nn.Module:
    """A timm model by name without weights, on the meta device by default (no memory, no time)."""
    import timm

    check_model_name(name)
    kwargs: dict[str, Any] = {}
    if img_size:
        kwargs["img_size"] = img_size
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    with torch.device(device):
        return timm.create_model(name, pretrained=False, **kwargs)


def build_model(cfg: dict[str, Any], num_classes: int) -> nn.Module:
    """The backbone from the run config (weights from the hub, a file, or a seeded random init),
    with the method applied."""
    import timm

    check_model_name(cfg["model"])
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if cfg.get("img_size"):
        kwargs["img_size"] = cfg["img_size"]
    torch.manual_seed(cfg["train"]["seed"])  # a random backbone (--no-pretrained) is rebuilt identically
    hub = cfg["pretrained"] and not cfg["weights"]
    try:
        model = timm.create_model(cfg["model"], pretrained=hub, **kwargs)
    except (OSError, RuntimeError) as e:
        if not hub:
            raise
        raise ValueError(f"cannot load pre-trained weights for {cfg['model']} ({e.__class__.__name__}: {e}); "
                         "offline, pass --weights FILE (a .safetensors/.pth/.bin/.npz checkpoint)") from None
    if cfg["weights"]:
        load_weights(model, cfg["weights"])
    st_config = SparseTuningConfig.from_dict(cfg["sparse_tuning"]) if cfg["sparse_tuning"] else None
    prepare(model, cfg["method"], st_config, BaselineConfig(**cfg.get("baseline", {})))
    video = cfg.get("video") or {}
    if video.get("frames"):
        model = VideoViT(model, video["frames"], video["video_tokens"], video["tubelet"])
    return model


def load_data(cfg: dict[str, Any], probe: nn.Module, data: Optional[str] = None):
    """Image or video datasets for a run config (data overrides its spec)."""
    spec = data or cfg["data"]
    kind, _, path = spec.partition(":")
    if kind not in VIDEO_KINDS:
        return load_image_data(spec, probe, download=cfg["download"], strict=cfg["strict_data"],
                               augment=cfg.get("augment", "auto"), train_samples=cfg.get("train_samples", 0),
                               eval_samples=cfg.get("eval_samples", 0), seed=cfg["train"]["seed"])
    v = cfg["video"]
    opts = VideoOptions(frames=v["frames"], rate=v["sampling_rate"], size=probe.patch_embed.img_size[0],
                        **defaults_for(kind))
    if v["test_clips"]:
        opts.test_clips = v["test_clips"]
    if v["test_crops"]:
        opts.test_crops = v["test_crops"]
    if v["flip"] != "auto":
        opts.flip = v["flip"] == "on"
    return load_video_data(kind, path, opts, strict=cfg["strict_data"])


def train_run(cfg: dict[str, Any], run_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train a resolved config into run_dir; returns the results."""
    run_dir = Path(run_dir)
    if not cfg.get("model") or not cfg.get("data"):
        raise ValueError("train needs --model NAME and --data SPEC")
    probe = build_architecture(cfg["model"], cfg.get("img_size"))  # for its data config
    data = load_data(cfg, probe)
    cfg = {**cfg, "num_classes": data.num_classes, "classes": data.classes}
    model = build_model(cfg, data.num_classes)
    if _is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run_dir / "config.json", json.dumps(cfg, indent=1).encode())
    meta = {"method": cfg["method"], "model": cfg["model"]}
    results = train(model, data, TrainConfig(**cfg["train"]), run_dir, resume=resume, metadata=meta)
    if _is_main():
        save_trainable(model, run_dir / "trainable.safetensors", meta)
        if cfg["method"] in SPARSE_TUNING_METHODS:  # the portable file for sparse_tuning.load_adapters
            save_adapters(getattr(model, "vit", model), run_dir / "adapters.safetensors")
        results = {"eval_split": data.eval_split, **results,
                   "note": "final = last epoch; best = highest top-1 over the evaluated epochs"}
        atomic_write_bytes(run_dir / "results.json", json.dumps(results, indent=1).encode())
    return results


def pretrained_with_sparsification(name: str, weights: str | None, img_size: int | None,
                                   keep_rate: float | None) -> nn.Module:
    """A pre-trained backbone with token sparsification and no adapters: what the method keeps
    before any training (the ranking needs no trained part)."""
    cfg = resolve_config({"model": name, "weights": weights, "img_size": img_size, "method": "ts-only",
                          "sparse_tuning": {} if keep_rate is None else {"keep_rate": keep_rate}})
    return build_model(cfg, num_classes=0).eval()


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.json)")
    return json.loads(path.read_text())


def load_run(run_dir: str | Path, keep_rate: Optional[float] = None) -> tuple[nn.Module, dict[str, Any]]:
    """The trained model of a run: its backbone rebuilt from config.json, its adapters loaded."""
    cfg = read_run_config(run_dir)
    weights = Path(run_dir) / "trainable.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found: the run has not finished (resume it with --resume)")
    model = build_model(cfg, cfg["num_classes"])
    load_trainable(model, weights)
    if keep_rate is not None:
        if getattr(model, "sparse_tuning", None) is None or cfg["method"] == "adaptformer":
            raise ValueError(f"--keep-rate applies to Sparse-Tuning runs, not to --method {cfg['method']}")
        model.sparse_tuning.keep_rate = keep_rate
    return model.eval(), cfg


def load_eval_data(model: nn.Module, cfg: dict[str, Any], data: Optional[str] = None):
    """A run's data (or another spec), checked against the number of classes it was trained on."""
    images = load_data(cfg, getattr(model, "vit", model), data)
    if images.num_classes != cfg["num_classes"]:
        raise ValueError(f"the data has {images.num_classes} classes; the run was trained on {cfg['num_classes']}")
    return images


def eval_run(run_dir: str | Path, data: Optional[str] = None, keep_rate: Optional[float] = None,
             device: str = "auto", batch_size: int = 128) -> dict[str, Any]:
    model, cfg = load_run(run_dir, keep_rate)
    device = resolve_device(device)
    images = load_eval_data(model, cfg, data)
    result = evaluate(model.to(device), images.eval, batch_size, device, cfg["train"]["amp"])
    st = getattr(model, "sparse_tuning", None)
    result.update(split=images.eval_split, keep_rate=st.keep_rate if st else 1.0)
    return result


def predict_run(run_dir: str | Path, images: list[str], top_k: int = 5, keep_rate: Optional[float] = None,
                device: str = "auto") -> list[dict[str, Any]]:
    from .data import make_transforms, read_user_image

    model, cfg = load_run(run_dir, keep_rate)
    if cfg.get("video", {}).get("frames"):
        raise ValueError("predict reads images; for a video run, use eval")
    device = resolve_device(device)
    model.to(device)
    _, transform = make_transforms(model, augment_mode(parse_data_spec(cfg["data"]), cfg.get("augment", "auto")))
    loaded = [read_user_image(path) for path in images]  # every file checked before any work
    out = []
    for path, image in zip(images, loaded):
        with torch.no_grad():
            probs = model(transform(image).unsqueeze(0).to(device)).softmax(-1)[0]
        top = probs.topk(min(top_k, probs.numel()))
        out.append({"image": str(path), "top": [{"label": cfg["classes"][i], "index": int(i), "prob": float(p)}
                                                for p, i in zip(top.values.tolist(), top.indices.tolist())]})
    return out


def _is_main() -> bool:
    """Rank 0 of a torchrun job (or a plain process): the one that writes files."""
    return int(os.environ.get("RANK", "0")) == 0
