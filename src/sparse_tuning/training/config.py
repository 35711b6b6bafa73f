"""The run configuration: one typed tree of dataclasses, torch-free.

    RunConfig            model, data, method and the other top-level options
      .sparse_tuning     core.config.SparseTuningConfig, as the method resolves it (None: no such config)
      .baseline          every other method's own options (methods/*.py declare them)
      .video             data.options.VideoConfig
      .train             TrainConfig

The command line is derived from it (each field's comment is its ``--help``; flags are flat).
Option layers merge defaults < preset < config file < flags; a layer may be nested
(``train: {epochs: 2}``) or flat (``epochs: 2``); an unknown key names the closest valid one.
``config.json`` in a run folder is ``RunConfig.to_dict()``.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from ..core.reduction import get_rule, rule_names
from ..core.config import SparseTuningConfig
from ..data.options import AUGMENTS, DENSE_KINDS, VIDEO_KINDS, VideoConfig, absolute_spec
from ..errors import UserError
from .validate import check_values
from ..methods import get_method, method_config, method_names, option_owners, validate_options
from ..text import count

AMPS = ("bf16", "fp16", "off")


@dataclass
class TrainConfig:
    epochs: int = 100                  # passes over the training set
    # global batch: images per optimizer step over all ranks and micro-batches (32: enough steps for a
    # short run on a small set; the presets take the paper's 64)
    batch_size: int = 32
    # peak learning rate, reached after the warmup (default: the method's own, from benchmarks/real:
    # 1e-2 for the head-only linear and ts-only, 3e-5 for full fine-tuning, 1e-3 for the others)
    lr: Optional[float] = None
    min_lr: float = 0.0                # learning rate at the end of the cosine decay
    # linear warmup from 0, in epochs (per-step schedule); default: 10% of the run, at most 10 epochs
    # (the paper's 10 of 100)
    warmup_epochs: Optional[float] = None
    weight_decay: float = 1e-4         # AdamW decay; never on biases, norms or other 1-d parameters
    # --task segment: the segmentation head learns at this multiple of --lr (default: 10, as mmsegmentation's
    # decode heads)
    head_lr_scale: Optional[float] = None
    grad_accum: int = 1                # micro-batches per optimizer step
    clip_grad: Optional[float] = None  # max global gradient norm; unset: no clipping
    amp: Literal["bf16", "fp16", "off"] = "off"  # mixed precision: bf16, fp16 (with a grad scaler) or off
    seed: int = 0                      # data order, augmentation, initialisation of new weights
    keep_rate_warmup: float = 0.0      # epochs over which the keep rate anneals from 1 to its target
    # train each step at a keep rate drawn uniformly from [this, 1] (0: off), so that one model serves
    # that range at inference; evaluation uses --keep-rate. With --keep-rate-warmup the bound anneals from 1
    keep_rate_random: float = 0.0
    # weight of a KL term pulling the reduced model's logits to its own every-token pass (computed without
    # gradients: one more forward per step); 0: off. For models that reduce tokens. Cost 5-6 points on the
    # suite of benchmarks/suite: the every-token pass it distils is never trained by the cross-entropy
    self_distill: float = 0.0
    teacher: Optional[str] = None      # a trained run folder (any method) whose logits the model also learns
    teacher_weight: float = 1.0        # weight of the teacher's KL term
    distill_temperature: float = 1.0   # temperature of the distillation terms (their KL is scaled by its square)
    label_smoothing: float = 0.0       # label smoothing of the cross-entropy
    mixup: float = 0.0                 # timm Mixup alpha (0: off)
    cutmix: float = 0.0                # timm CutMix alpha (0: off)
    save_every: int = 0                # optimizer steps between checkpoints; 0: at epoch ends only
    log_every: int = 10                # optimizer steps between progress and metrics lines
    eval_every: int = 1                # epochs between evaluations (the last epoch is always evaluated)
    eval_batch_size: int = 128         # images per evaluation batch and rank
    num_workers: int = 2               # data-loading processes per rank
    device: str = "auto"               # auto (cuda if available), cpu, cuda, cuda:N
    deterministic: bool = False        # torch.use_deterministic_algorithms for bit-exact reruns
    compile: bool = False              # torch.compile the model (token counts are static: one compile per input size)
    compile_backend: str = "inductor"  # torch.compile backend; aot_eager checks the graph without generating code
    grad_checkpointing: bool = False   # recompute each block's activations in the backward pass: less memory, more time
    # loggers beside RUN_DIR/metrics.jsonl, comma-separated: tensorboard (RUN_DIR/tensorboard, with the kept tokens
    # of 4 validation images at each evaluation; the .[log] extra),
    # csv (RUN_DIR/csv/train.csv and one per evaluated split), wandb (Weights & Biases, WANDB_MODE=offline works;
    # the .[wandb] extra)
    log: str = ""

    def __post_init__(self) -> None:
        if self.warmup_epochs is None and isinstance(self.epochs, int):
            self.warmup_epochs = default_warmup(self.epochs)
        if self.amp not in AMPS:
            raise UserError(f"amp={self.amp!r}: expected bf16, fp16 or off")
        for name in ("epochs", "batch_size", "grad_accum", "log_every", "eval_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"{name}={getattr(self, name)!r}: expected an integer >= 1")
        if (self.lr is not None and self.lr <= 0) or self.min_lr < 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            raise UserError("lr must be > 0; min_lr, weight_decay and warmup_epochs must be >= 0")
        if not 0 <= self.keep_rate_random <= 1:
            raise UserError(f"keep_rate_random={self.keep_rate_random!r}: expected the lowest keep rate drawn, in "
                            "(0, 1] (0: off)")
        if self.save_every < 0 or self.num_workers < 0 or self.keep_rate_warmup < 0:
            raise UserError("save_every, num_workers and keep_rate_warmup must be >= 0")
        if self.head_lr_scale is not None and self.head_lr_scale <= 0:
            raise UserError(f"head_lr_scale={self.head_lr_scale!r}: expected a multiple of the learning rate > 0")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise UserError(f"clip_grad={self.clip_grad!r}: expected a norm > 0 (leave it unset for no clipping)")
        if not 0 <= self.label_smoothing < 1:
            raise UserError(f"label_smoothing={self.label_smoothing!r}: expected a number in [0, 1)")
        if self.self_distill < 0 or self.teacher_weight < 0 or self.distill_temperature <= 0:
            raise UserError("self_distill and teacher_weight must be >= 0, distill_temperature > 0")
        if self.mixup < 0 or self.cutmix < 0:
            raise UserError("mixup and cutmix are Beta-distribution alphas: >= 0 (0: off)")
        check_device(self.device)
        unknown = [name for name in loggers(self.log) if name not in LOGGERS]
        if unknown:
            raise UserError(f"log={self.log!r}: {unknown[0]!r} is not a logger; expected a comma-separated subset of "
                            f"{', '.join(LOGGERS)}")


LOGGERS = ("tensorboard", "csv", "wandb")


def loggers(log: str) -> list[str]:
    return [name.strip() for name in log.split(",") if name.strip()]


def default_warmup(epochs: int) -> float:
    """Warmup epochs when none is given: 10% of the run, at most the paper's 10 epochs (of its 100)."""
    return min(0.1 * epochs, 10.0)


def check_device(device: str) -> None:
    """auto, cpu, cuda, cuda:N or mps; anything else is one line (torch would raise its own)."""
    import re

    if not re.fullmatch(r"auto|cpu|(cuda|mps|xpu)(:\d+)?", str(device)):
        raise UserError(f"device={device!r}: expected auto, cpu, cuda, cuda:N, mps or xpu")


def check_machine(train: TrainConfig) -> None:
    """What this machine must offer for a new run (not checked when a recorded run is read)."""
    if train.compile:
        from torch._dynamo import list_backends

        known = list_backends(exclude_tags=())
        if train.compile_backend not in known:
            raise UserError(f"compile_backend={train.compile_backend!r}: expected one of {', '.join(known)}")
    if train.amp == "fp16":
        import torch  # only here: a config without fp16 is checked without torch

        if train.device == "cpu" or not torch.cuda.is_available():
            raise UserError("amp=fp16 needs a CUDA GPU; use --amp bf16 on the CPU")
    for name, extra in (("tensorboard", "log"), ("wandb", "wandb")):
        if name in loggers(train.log):
            from ..extras import require_extra

            require_extra(extra, f"--log {name}")


@dataclass
class RunConfig:
    model: Optional[str] = None        # timm model name (vit_base_patch16_224.augreg_in21k) or hf:ID_OR_DIR (a transformers model)
    data: Optional[str] = None         # folder:PATH | vtab:ROOT/TASK | cifar100:ROOT | svhn:ROOT | food101:ROOT | mnist:ROOT | fashionmnist:ROOT | torchvision:NAME:ROOT | kinetics:ROOT | ssv2:ROOT | frames:ROOT | videolist:TRAIN[,EVAL] | seg:ROOT (segmentation: PASCAL VOC layout, or {train,val}/{images,masks})
    # what the model learns: classify (a label per image) or segment (a class per pixel, from seg: data; a linear
    # head on the patch tokens restored to the full grid) (default: segment for seg: data, classify otherwise)
    task: Literal["classify", "segment"] = "classify"
    head_blocks: tuple[int, ...] = ()  # --task segment: the blocks whose outputs the head reads, concatenated (default: the last; -1 counts from the end)
    method: str = "sparse-tuning"      # what trains (the methods are listed under --method)
    preset: Optional[Literal["vtab", "full"]] = None  # the paper's recipe, under your options: vtab (b=8, lr 1e-2) or full (b=32, lr 1e-3)
    pretrained: bool = True            # load the model's pre-trained weights from the hub; --no-pretrained: a seeded random backbone (tests, smoke runs)
    weights: Optional[str] = None      # local backbone weights: .safetensors, .pth, .bin or Google's .npz
    img_size: Optional[int] = None     # input size (default: the model's); position embeddings are resampled
    download: bool = False             # let torchvision download the dataset (where a network exists)
    strict_data: bool = False          # fail on an unreadable image instead of skipping and counting it
    # training augmentation: none, crop-flip (random-resized crop and flip), crop (no flip), or auto: none
    # for vtab: data, for 10,000 training images or fewer, or for fewer than 10 epochs; crop-flip
    # otherwise (crop for digits: mnist, svhn). The run records what auto chose, and why
    augment: Literal["auto", "none", "crop-flip", "crop"] = "auto"
    train_samples: int = 0             # train on a class-balanced subset of N images drawn with the seed (0: every image)
    eval_samples: int = 0              # evaluate on a class-balanced subset of N images drawn with the seed (0: every image)
    sparse_tuning: Optional[SparseTuningConfig] = None  # resolved from the method and the Sparse-Tuning options
    baseline: dict[str, Any] = field(default_factory=dict)  # the other methods' options, validated
    video: VideoConfig = field(default_factory=VideoConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    num_classes: int = 0               # recorded by train: classes of the training data
    classes: list[str] = field(default_factory=list)  # recorded by train: their names
    # recorded: where the learning rate, warmup, schedule and augmentation came from (default,
    # preset, auto's reason, or given), as the run's opening summary prints them
    choices: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out["sparse_tuning"] = self.sparse_tuning.to_dict() if self.sparse_tuning else None
        out["video"], out["train"] = dataclasses.asdict(self.video), dataclasses.asdict(self.train)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        """A recorded config (config.json): every section as written, validated again."""
        d = dict(d)
        st = d.pop("sparse_tuning", None)
        known = {f.name for f in dataclasses.fields(cls)} - {"baseline", "video", "train"}
        if "head_blocks" in d:
            d["head_blocks"] = tuple(d["head_blocks"] or ())
        cfg = cls(**{k: v for k, v in d.items() if k in known},  # a key added by hand is left alone
                  sparse_tuning=SparseTuningConfig.from_dict(st) if st else None,
                  baseline=validate_options(d.get("baseline") or {}),
                  video=VideoConfig(**(d.get("video") or {})), train=TrainConfig(**(d.get("train") or {})))
        return cfg

    @property
    def is_video(self) -> bool:
        return str(self.data or "").partition(":")[0] in VIDEO_KINDS


# Preset overrides: the paper's VTAB-1K recipe and its complete-dataset one. Their warmup is the
# default rule's, which gives the paper's 10 epochs at their 100 and a tenth of a shorter run.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "vtab": {"train": {"epochs": 100, "lr": 1e-2, "min_lr": 0.0, "weight_decay": 1e-4,
                       "batch_size": 64},
             "sparse_tuning": {"bottleneck": 8}},
    "full": {"train": {"epochs": 100, "lr": 1e-3, "min_lr": 1e-6, "weight_decay": 5e-2,
                       "batch_size": 64},
             "sparse_tuning": {"bottleneck": 32}},
}
SECTIONS = ("sparse_tuning", "baseline", "video", "train")
RECORDED = ("num_classes", "classes", "choices")  # written by train, never options


def top_level_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(RunConfig) if f.name not in SECTIONS + RECORDED]


def section_fields(section: str) -> list[str]:
    """The option names of a nested section."""
    if section == "baseline":
        return list(option_owners())
    cls = {"train": TrainConfig, "sparse_tuning": SparseTuningConfig, "video": VideoConfig}[section]
    return [f.name for f in dataclasses.fields(cls)]


def _nest(layer: dict[str, Any]) -> dict[str, Any]:
    """A layer with flat section keys (``epochs: 2``) moved into their section (``train:``)."""
    top = {f.name for f in top_level_fields()}
    owner = {name: section for section in SECTIONS for name in section_fields(section)}
    out: dict[str, Any] = {}
    for key, value in layer.items():
        if key in SECTIONS:
            if not isinstance(value or {}, dict):
                raise UserError(f"option {key!r} holds a mapping of options, got {value!r}")
            fields = section_fields(key)
            for name in value or {}:
                if name not in fields:
                    close = difflib.get_close_matches(name, fields, n=1)
                    raise UserError(f"unknown option {name!r} under {key}:"
                                    + (f"; did you mean {close[0]!r}?" if close else ""))
            out.setdefault(key, {}).update(value or {})
        elif key in owner:
            out.setdefault(owner[key], {})[key] = value
        elif key in top:
            out[key] = value
        else:
            close = difflib.get_close_matches(key, sorted(top | set(owner)), n=1)
            raise UserError(f"unknown option {key!r} in the configuration"
                            + (f"; did you mean {close[0]!r}?" if close else ""))
    return out


def resolve_config(*layers: dict[str, Any]) -> RunConfig:
    """Merge option layers (defaults < preset < config file < flags), validated before any work."""
    merged: dict[str, Any] = {section: {} for section in SECTIONS}
    for layer in layers:
        for key, value in _nest(layer).items():
            if key in SECTIONS:
                merged[key].update(value)
            else:
                merged[key] = value
    if merged["train"].get("lr", 0) is None:  # "lr: null" in a config file: the method's default
        del merged["train"]["lr"]
    given = set(merged["train"])
    preset = merged.get("preset")
    if preset is not None:
        if preset not in PRESETS:
            raise UserError(f"preset {preset!r}: expected one of {', '.join(PRESETS)}")
        for section, values in PRESETS[preset].items():  # presets sit under everything the user gave
            merged[section] = {**values, **merged[section]}
    method = merged.get("method", RunConfig.method)
    if method not in method_names():
        raise UserError(f"method {method!r}: expected one of {', '.join(method_names())}")
    fields = dict(merged["sparse_tuning"])
    keep = fields.pop("keep_rate", None)
    if fields.pop("adapters", True) is False:  # --no-adapters: sparse-tuning becomes ts-only
        method = get_method(method).without_adapters or method
    top = {k: v for k, v in merged.items() if k not in SECTIONS}
    check_values(RunConfig, top)
    for section, cls in (("sparse_tuning", SparseTuningConfig), ("video", VideoConfig), ("train", TrainConfig)):
        check_values(cls, merged[section], section)
    for name, cls in option_owners().items():
        if name in merged["baseline"]:
            check_values(cls, {name: merged["baseline"][name]}, "baseline")
    merged["train"].setdefault("lr", get_method(method).lr)
    cfg = RunConfig(**{**top, "method": method}, sparse_tuning=method_config(method, keep, **fields),
                    baseline=validate_options(merged["baseline"]), video=VideoConfig(**merged["video"]),
                    train=TrainConfig(**merged["train"]))
    if "task" not in merged and str(cfg.data or "").partition(":")[0] in DENSE_KINDS:
        cfg.task = "segment"
    cfg.head_blocks = tuple(cfg.head_blocks)
    cfg.choices = schedule_choices(cfg, given)
    if "augment" in merged:  # else train chooses it from the data (--augment auto)
        cfg.choices["augment"] = "given"
    check_run_config(cfg)
    check_machine(cfg.train)
    absolute = lambda path: os.path.abspath(os.path.expanduser(path)) if path else path
    return dataclasses.replace(cfg, data=absolute_spec(cfg.data) if cfg.data else cfg.data, weights=absolute(cfg.weights),
                               train=dataclasses.replace(cfg.train, teacher=absolute(cfg.train.teacher)))


def schedule_choices(cfg: RunConfig, given: set[str]) -> dict[str, str]:
    """Where the learning rate, its warmup and its schedule came from: given (a flag or the config
    file), the preset, or the default and its rule."""
    train = PRESETS[cfg.preset]["train"] if cfg.preset else {}

    def origin(name: str, default: str) -> str:
        return "given" if name in given else f"preset {cfg.preset}" if name in train else default

    return {"lr": origin("lr", f"default for --method {cfg.method}"),
            "warmup_epochs": origin("warmup_epochs", f"default: 10% of {count(cfg.train.epochs, 'epoch')}, at most 10"),
            "schedule": origin("min_lr", "default")}


def check_run_config(cfg: RunConfig) -> None:
    check_task(cfg)
    for name in ("train_samples", "eval_samples"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UserError(f"{name}={value!r}: expected an integer >= 0 (0: every image)")
        if value and cfg.is_video:
            raise UserError(f"{name} takes a subset of image data; it does not apply to video data")
    if cfg.augment not in AUGMENTS:
        raise UserError(f"augment={cfg.augment!r}: expected one of {', '.join(AUGMENTS)}")
    if cfg.data and cfg.is_video != bool(cfg.video.frames):
        raise UserError("video data (kinetics:, ssv2:, frames:, videolist:) needs --frames N, and --frames "
                        "needs video data")
    if cfg.train.self_distill and (cfg.sparse_tuning is None or cfg.sparse_tuning.keeps_every_token):
        raise UserError(f"self_distill distils the every-token pass into a model that reduces tokens; --method "
                        f"{cfg.method} keeps every token here (give it a --reduction, or use --method sparse-tuning)")
    if cfg.train.teacher and not cfg.train.teacher_weight:
        raise UserError("teacher_weight=0 turns the --teacher term off; give it a weight > 0, or no --teacher")
    if cfg.is_video and cfg.augment != "auto":
        raise UserError(f"--augment {cfg.augment} is for images; a video run samples and crops its clips by the "
                        "video recipe (--frames and its options)")
    low = cfg.train.keep_rate_random
    if low and cfg.sparse_tuning is not None and not cfg.sparse_tuning.keeps_every_token:
        if low >= 1:
            raise UserError("keep_rate_random=1 draws only keep rate 1: training on every token; to train dense "
                            "and reduce at inference, train without a reduction and give eval --reduction")
        if low > cfg.sparse_tuning.keep_rate:
            raise UserError(f"keep_rate_random={low:g} draws keep rates in [{low:g}, 1], above the keep rate "
                            f"{cfg.sparse_tuning.keep_rate:g} that evaluation uses; give at most --keep-rate")
        if cfg.train.compile:
            raise UserError("keep_rate_random changes the number of tokens at every step, and torch.compile "
                            "would compile the model again for each; leave out --compile")
    schedule = [f for f in ("keep_rate_warmup", "keep_rate_random") if getattr(cfg.train, f)]
    st = cfg.sparse_tuning
    if schedule and (st is None or st.keeps_every_token or not st.rule.has_keep_rate):
        keep_rules = ", ".join(name for name in rule_names() if get_rule(name).has_keep_rate)
        raise UserError(f"{schedule[0]} schedules the keep rate of a model that reduces tokens by one (--method "
                        f"sparse-tuning or ts-only, or any method with --reduction {keep_rules}); --method "
                        f"{cfg.method} here " + (f"reduces by {st.reduction}, which has no keep rate"
                                                  if st is not None and not st.keeps_every_token
                                                  else "keeps every token"))


def check_task(cfg: RunConfig) -> None:
    """Segmentation reads seg: data, one image at a time with its mask: the options that mix images
    or compare per-image logits do not apply to it."""
    dense = str(cfg.data or "").partition(":")[0] in DENSE_KINDS
    if cfg.task == "classify":
        if dense and cfg.data:
            raise UserError("seg: data holds masks for --task segment; --task classify needs labelled images")
        if cfg.head_blocks or cfg.train.head_lr_scale is not None:
            name = "head_blocks" if cfg.head_blocks else "head_lr_scale"
            raise UserError(f"{name} is the segmentation head's; it goes with --task segment")
        return
    if cfg.data and not dense:
        raise UserError(f"--task segment reads seg:ROOT data (images and their masks), not {cfg.data.partition(':')[0]}:")
    given = [name for name, on in (("mixup", cfg.train.mixup), ("cutmix", cfg.train.cutmix),
                                   ("self_distill", cfg.train.self_distill), ("teacher", cfg.train.teacher),
                                   ("frames", cfg.video.frames)) if on]
    if given:
        raise UserError(f"{given[0]} is for classification; --task segment trains without it")
    if cfg.augment not in ("auto", "none"):
        raise UserError(f"--augment {cfg.augment} moves pixels without their mask; --task segment trains without "
                        "augmentation (--augment none, or auto)")
