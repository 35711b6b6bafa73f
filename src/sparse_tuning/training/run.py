"""A run: a resolved RunConfig, a model built from it, a run folder. The library functions that
the CLI, the benchmarks and the demo call.

RUN_DIR holds config.json (everything needed to rebuild the model), metrics.jsonl,
checkpoints/, trainable.safetensors (what the method trained: adapters + head for Sparse-Tuning),
adapters.safetensors (Sparse-Tuning methods: the portable adapter file) and results.json.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from ..adapter_io import save_adapters
from ..data.options import absolute_spec
from ..api import set_keep_rate
from ..errors import UserError
from ..files import atomic_write_bytes
from ..hosts import build_architecture, host_for, host_named, logits_of
from ..methods import get_method, prepare
from .checkpoint import load_trainable, save_trainable
from .config import RunConfig, resolve_config
from .records import read_run_config
from .distill import Distillation
from .devices import compiled
from .loop import Trainer, resolve_device
from .tasks import backbone_of, get_task
from .run_folder import RunFolderError, RunLock, check_new_folder, is_run_folder, read_json, remove_temporaries
from ..text import count


def build_model(cfg: RunConfig, num_classes: int) -> nn.Module:
    """The backbone from the run config (weights from the hub, a file, or a seeded random init),
    with the method applied, inside the task's model (a segmentation head around it)."""
    host = host_named(cfg.model)
    torch.manual_seed(cfg.train.seed)  # a random backbone (--no-pretrained) is rebuilt identically
    hub = cfg.pretrained and not cfg.weights
    task = get_task(cfg.task)
    model = host.create(cfg.model, pretrained=hub, img_size=cfg.img_size, num_classes=task.backbone_classes(num_classes))
    if cfg.weights:
        host.load_weights(model, cfg.weights)
    prepare(model, cfg.method, cfg.sparse_tuning, cfg.baseline)
    if cfg.video.frames:
        model = host.video_model(model, cfg.video.frames, cfg.video.video_tokens, cfg.video.tubelet)
    return task.model(model, num_classes, cfg.head_blocks)


def load_data(cfg: RunConfig, probe: nn.Module, data: Optional[str] = None, eval_only: bool = False,
              new_run: bool = False):
    """Image or video datasets for a run config (data overrides its spec); for a new run,
    --augment auto is chosen from the data (the data's ``augment`` and ``augment_reason``)."""
    from ..data.images import load_image_data
    from ..data.video import load_video_data
    from ..data.options import DENSE_KINDS, VIDEO_KINDS

    spec = data or cfg.data
    kind, _, path = spec.partition(":")
    if kind in DENSE_KINDS:
        from ..data.segmentation import load_segmentation_data

        dc = host_for(probe).data_config(probe)  # the backbone's input size and normalisation
        return load_segmentation_data(path, tuple(dc["input_size"][1:]), dc["mean"], dc["std"],
                                      train_samples=0 if eval_only else cfg.train_samples,
                                      eval_samples=cfg.eval_samples, seed=cfg.train.seed,
                                      classes=cfg.classes if eval_only and cfg.classes else None)
    if kind not in VIDEO_KINDS:
        return load_image_data(spec, probe, download=cfg.download, strict=cfg.strict_data, augment=cfg.augment,
                               train_samples=cfg.train_samples, eval_samples=cfg.eval_samples, seed=cfg.train.seed,
                               eval_only=eval_only, epochs=cfg.train.epochs if new_run else None)
    host = host_for(probe)
    dc = host.data_config(probe)  # the backbone's normalisation, as for images
    return load_video_data(kind, path, cfg.video.plan(kind, host.input_size(probe)[1]), strict=cfg.strict_data,
                           mean=dc["mean"], std=dc["std"])


def reduction_text(config) -> str:
    """', tokens: ...' for a run's summary line: which reduction, at what rate; '' for none."""
    return "" if config is None or config.keeps_every_token else f", tokens: {config.describe_reduction()}"


RESUME_CHANGES = ("epochs", "lr", "min_lr")  # what --resume may change: train longer, or with another lr


def resume_config(run_dir: str | Path, **changes: Any) -> RunConfig:
    """The recorded config of a run to resume, with the allowed changes (more epochs; another
    peak or final learning rate, e.g. lower after a NaN loss); refused for a finished run that
    is not given more epochs."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    bad = sorted(set(changes) - set(RESUME_CHANGES))
    if bad:
        raise RunFolderError(f"--resume continues a run as config.json records it; it may change only "
                             f"{', '.join('--' + c.replace('_', '-') for c in RESUME_CHANGES)}, not {bad[0]}")
    if not is_run_folder(run_dir):
        raise RunFolderError(f"{run_dir} is not a run folder that train wrote (its config.json records no classes)")
    if changes:  # the changed options' reasons follow them
        why = {**cfg.choices, **({"lr": "given at resume"} if "lr" in changes else {}),
               **({"schedule": "given at resume"} if "min_lr" in changes else {})}
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **changes), choices=why)
    _check_not_finished(run_dir, cfg)
    return cfg


def _check_not_finished(run_dir: Path, cfg: RunConfig) -> None:
    done = run_dir / "results.json"
    if done.is_file():
        final = read_json(done, "the results of a finished run").get("final") or {}
        if final.get("epoch", -1) + 1 >= cfg.train.epochs:
            raise RunFolderError(f"{run_dir} is finished ({count(cfg.train.epochs, 'epoch')}, results.json); nothing to "
                                 f"resume. To train it longer: --resume {run_dir} --epochs N with N > {cfg.train.epochs}")


def train_run(cfg: RunConfig, run_dir: str | Path, resume: bool = False, log=print) -> dict[str, Any]:
    """Train a resolved config into run_dir (a new or empty folder, or the run to resume, with
    ``resume_config``'s config); returns the results. One process at a time per folder; nothing in
    the folder changes before every check has passed."""
    run_dir = Path(run_dir)
    if not cfg.model or not cfg.data:
        raise UserError("train needs --model NAME and --data SPEC")
    main = _is_main()
    if main and not resume:
        check_new_folder(run_dir)
    created = main and not run_dir.exists()
    with RunLock(run_dir, enabled=main):
        try:
            return _train_locked(cfg, run_dir, resume, log, main)
        except BaseException as e:
            if created:  # removed under the lock: no other process can have started in it
                _remove_if_nothing_to_resume(run_dir, e)
            raise


def _remove_if_nothing_to_resume(run_dir: Path, error: BaseException) -> None:
    """A new run refused before its first file, or stopped by a user's mistake (bad data) before
    its first checkpoint, leaves no trace: nothing in it could be resumed."""
    if not run_dir.is_dir():
        return
    files = {p.name for p in run_dir.iterdir()} - {".lock"}
    checkpoints = run_dir / "checkpoints"
    loggers = {"tensorboard", "csv", "wandb", "wandb_run_id", "wandb_last_step"}  # what the loggers start with
    if not files or (isinstance(error, ValueError) and files <= {"config.json", "metrics.jsonl", "checkpoints"} | loggers
                     and not (checkpoints.is_dir() and any(checkpoints.iterdir()))):
        shutil.rmtree(run_dir)


def _train_locked(cfg: RunConfig, run_dir: Path, resume: bool, log, main: bool) -> dict[str, Any]:
    if main:  # again under the lock: another process may have started in between
        if resume:
            _check_not_finished(run_dir, cfg)
        else:
            check_new_folder(run_dir)
        remove_temporaries(run_dir)
    probe = build_architecture(cfg.model, cfg.img_size)  # for its data config
    data = load_data(cfg, probe, new_run=not resume)
    if resume and cfg.num_classes and (data.num_classes, list(data.classes)) != (cfg.num_classes, list(cfg.classes)):
        raise RunFolderError(f"the data changed since the run started: {data.num_classes} classes now, "
                             f"{cfg.num_classes} then; resume with the data the run was trained on")
    cfg = dataclasses.replace(cfg, num_classes=data.num_classes, classes=list(data.classes))
    if getattr(data, "augment_reason", ""):  # chosen for this run: recorded as chosen, with its reason
        cfg = dataclasses.replace(cfg, augment=data.augment, choices={**cfg.choices, "augment": data.augment_reason})
    model = build_model(cfg, data.num_classes)
    method = get_method(cfg.method)
    meta = {"method": cfg.method, "model": cfg.model}
    distill = Distillation(cfg.train.self_distill, teacher_model(cfg, model), cfg.train.teacher_weight,
                           cfg.train.distill_temperature)
    task = get_task(cfg.task)
    trainer = Trainer(model, data, cfg.train, run_dir, resume=resume, metadata=meta, log=log,
                      hook=method.train_hook, record=cfg.to_dict(), changeable=RESUME_CHANGES,
                      choices=cfg.choices, distill=distill, task=task)
    if main:  # every check passed: only now is the folder written
        atomic_write_bytes(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=1).encode())
    results = trainer.run(about=f"{cfg.model}, --method {cfg.method}" + reduction_text(cfg.sparse_tuning))
    if main:
        save_trainable(model, run_dir / "trainable.safetensors", meta)
        if method.saves_adapters:  # the portable file for sparse_tuning.load_adapters
            backbone = backbone_of(model)
            save_adapters(host_for(backbone).image_model(backbone), run_dir / "adapters.safetensors")
        results = {"eval_split": data.eval_split, "task": task.name, **results,
                   "note": f"final = last epoch; best = highest {task.primary_label} over the evaluated epochs"}
        atomic_write_bytes(run_dir / "results.json", json.dumps(results, indent=1).encode())
    return results


def teacher_model(cfg: RunConfig, student: nn.Module) -> Optional[nn.Module]:
    """The trained run named by --teacher, checked to read the same images as the student (the
    same classes, input size and normalisation: both see the same batch)."""
    if not cfg.train.teacher:
        return None
    if not is_run_folder(cfg.train.teacher):
        raise RunFolderError(f"--teacher {cfg.train.teacher} is not a trained run folder")
    if read_run_config(cfg.train.teacher).task != "classify":
        raise UserError(f"--teacher {cfg.train.teacher} is a segmentation run; a teacher gives class logits per image")
    teacher, taught = load_run(cfg.train.teacher)
    if (taught.num_classes, list(taught.classes)) != (cfg.num_classes, list(cfg.classes)):
        raise UserError(f"--teacher {cfg.train.teacher} was trained on {taught.num_classes} classes "
                        f"({', '.join(taught.classes[:3])}, ...); this run has {cfg.num_classes} "
                        f"({', '.join(cfg.classes[:3])}, ...): its logits would name other classes")
    if taught.video.frames != cfg.video.frames:
        what = lambda frames: f"clips of {count(frames, 'frame')}" if frames else "images"
        raise UserError(f"--teacher {cfg.train.teacher} reads {what(taught.video.frames)}; this run reads "
                        f"{what(cfg.video.frames)}: it sees the student's batch")
    keys = ("input_size", "mean", "std")
    mine, theirs = (host_for(m).data_config(host_for(m).image_model(m)) for m in (student, teacher))
    differ = [k for k in keys if tuple(mine[k]) != tuple(theirs[k])]
    if differ:
        raise UserError(f"--teacher {cfg.train.teacher} reads images with another {differ[0]} "
                        f"({tuple(theirs[differ[0]])}, this run {tuple(mine[differ[0]])}); it sees the student's batch")
    return teacher


def pretrained_with_sparsification(name: str, weights: str | None, img_size: int | None,
                                   keep_rate: float | None) -> nn.Module:
    """A pre-trained backbone with token sparsification and no adapters: what the method keeps
    before any training (the ranking needs no trained part)."""
    cfg = resolve_config({"model": name, "weights": weights, "img_size": img_size, "method": "ts-only",
                          "sparse_tuning": {} if keep_rate is None else {"keep_rate": keep_rate}})
    return build_model(cfg, num_classes=0).eval()


def reduced_at_inference(cfg: RunConfig, reduction: str, keep_rate: Optional[float] = None,
                         tome_r: Optional[int] = None) -> RunConfig:
    """A run trained on every token, rebuilt with a token reduction for inference: the same trained
    weights under the same names (Dense Adapters alone become Sparse-Tuning; any other method is
    reduced first, as a --reduction at training would)."""
    from ..methods import method_config

    if cfg.sparse_tuning is not None and not cfg.sparse_tuning.keeps_every_token:
        raise UserError(f"--reduction rebuilds a run trained on every token; this one already reduces tokens "
                        f"({cfg.sparse_tuning.describe_reduction()}): --keep-rate changes its rate")
    method, fields = cfg.method, {"reduction": reduction}
    if cfg.sparse_tuning is not None:  # the run's own settings (bottleneck, scale, blocks, merge) stay
        fields.update({k: v for k, v in cfg.sparse_tuning.to_dict().items()
                       if k not in ("keep_rate", "reduction", "tome_r", "adapters")})
    if cfg.method == "da-only":  # the same Dense Adapters, now with the reduction between them
        method = "sparse-tuning"
    if tome_r is not None:
        fields["tome_r"] = [tome_r]
    return dataclasses.replace(cfg, method=method, sparse_tuning=method_config(method, keep_rate, **fields))


def load_run(run_dir: str | Path, keep_rate: Optional[float] = None, reduction: Optional[str] = None,
             tome_r: Optional[int] = None) -> tuple[nn.Module, RunConfig]:
    """The trained model of a run: its backbone rebuilt from config.json, its trained part loaded;
    with ``reduction``, a run trained on every token is rebuilt with that reduction (train dense,
    reduce at inference)."""
    cfg = read_run_config(run_dir)
    if reduction not in (None, "none"):
        cfg = reduced_at_inference(cfg, reduction, keep_rate, tome_r)
        keep_rate = None  # in the config already
    elif tome_r is not None:
        raise UserError("--tome-r goes with --reduction tome")
    weights = Path(run_dir) / "trainable.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found: the run has not finished (resume it with --resume)")
    model = build_model(cfg, cfg.num_classes)
    load_trainable(model, weights)
    if keep_rate is not None:
        set_keep_rate(backbone_of(model), keep_rate, cfg.method)
    return model.eval(), cfg


def load_eval_data(model: nn.Module, cfg: RunConfig, data: Optional[str] = None):
    """A run's data (or another spec), checked against the number of classes it was trained on."""
    from ..data.options import DENSE_KINDS

    dense = str(data or cfg.data).partition(":")[0] in DENSE_KINDS
    if dense != (cfg.task == "segment"):
        raise UserError(f"the run {'segments' if cfg.task == 'segment' else 'classifies'}; --data "
                        f"{data} is {'segmentation data' if dense else 'not seg: data'}")
    backbone = backbone_of(model)
    images = load_data(cfg, host_for(backbone).image_model(backbone), data, eval_only=True)
    if images.num_classes != cfg.num_classes:
        raise UserError(f"the data has {images.num_classes} classes; the run was trained on {cfg.num_classes}")
    if cfg.classes and list(images.classes) != list(cfg.classes):
        differ = [f"{i}: {a!r} here, {b!r} in the run" for i, (a, b) in enumerate(zip(images.classes, cfg.classes))
                  if a != b]
        raise UserError(f"the data's classes are not the run's (label {differ[0]}); its accuracy would be "
                        "measured against the wrong names")
    return images


def eval_run(run_dir: str | Path, data: Optional[str] = None, keep_rate: Optional[float] = None,
             device: str = "auto", batch_size: int = 128, write: bool = True, compile: bool = False,
             reduction: Optional[str] = None, tome_r: Optional[int] = None) -> dict[str, Any]:
    """Evaluate a trained run (on its data or on ``data``); with ``write``, the result goes to
    RUN_DIR/eval-SPLIT[-keepRATE][-DATA].json, DATA a short hash of another data spec, so an
    evaluation on other data never overwrites one on the run's."""
    import hashlib

    from ..files import atomic_write_bytes

    model, cfg = load_run(run_dir, keep_rate, reduction, tome_r)
    device = resolve_device(device)
    images = load_eval_data(model, cfg, data)
    torch.manual_seed(cfg.train.seed)  # the random rule's draws: an evaluation repeats exactly
    task = get_task(cfg.task)
    result = task.evaluate(compiled(model.to(device), compile, cfg.train.compile_backend), images.eval, batch_size,
                           device, cfg.train.amp, num_classes=cfg.num_classes)
    st = getattr(backbone_of(model), "sparse_tuning", None)
    spec = absolute_spec(data) if data else cfg.data
    result.update(split=images.eval_split, keep_rate=st.keep_rate if st else 1.0, data=spec, task=task.name)
    if reduction not in (None, "none"):
        result["reduction"] = cfg.sparse_tuning.describe_reduction()
    if write:
        name = f"eval-{result['split']}" + (f"-{reduction}" if reduction not in (None, "none") else "") \
            + (f"-r{tome_r}" if tome_r is not None else "") + (f"-keep{keep_rate}" if keep_rate is not None else "")
        if spec != cfg.data:
            name += "-" + hashlib.sha1(spec.encode()).hexdigest()[:8]
        result["file"] = str(Path(run_dir) / f"{name}.json")
        atomic_write_bytes(result["file"], (json.dumps(result, indent=1) + "\n").encode())
    return result


def predict_run(run_dir: str | Path, images: list[str], top_k: int = 5, keep_rate: Optional[float] = None,
                device: str = "auto", masks: Optional[str | Path] = None) -> list[dict[str, Any]]:
    """A classification run: each image's top-k labels. A segmentation run: each image's mask,
    written as a palette PNG into ``masks`` (needed), and the share of pixels per class."""
    from ..data.images import augment_mode, make_transforms, parse_data_spec, user_image_paths

    images = user_image_paths(images)
    cfg = read_run_config(run_dir)
    if (cfg.task == "segment") != (masks is not None):
        raise UserError(f"{run_dir} is a segmentation run: give --masks DIR for its predicted masks"
                        if cfg.task == "segment" else "--masks DIR is for segmentation runs; this one classifies")
    model, cfg = load_run(run_dir, keep_rate)
    if cfg.video.frames:
        raise UserError("predict reads images; for a video run, use eval")
    device = resolve_device(device)
    model.to(device)
    if cfg.task == "segment":
        from ..data.segmentation import SegmentationDataset
        from .segmentation import predict_masks

        dc = host_for(backbone_of(model)).data_config(backbone_of(model))
        reader = SegmentationDataset([], tuple(dc["input_size"][1:]), dc["mean"], dc["std"])  # as in training
        return predict_masks(model, images, reader.image, cfg.classes, masks, device)
    _, transform = make_transforms(model, augment_mode(parse_data_spec(cfg.data), cfg.augment))
    return top_k_predictions(model, transform, images, cfg.classes, top_k, device)


def top_k_predictions(model: nn.Module, transform, images: list[Path], classes: list[str], top_k: int = 5,
                      device: str = "cpu") -> list[dict[str, Any]]:
    """Each image's top-k labels and probabilities (a run's model, or an exported file's)."""
    from ..data.images import read_user_image

    loaded = [read_user_image(path) for path in images]  # every file checked before any work
    out = []
    for path, image in zip(images, loaded):
        with torch.no_grad():
            probs = logits_of(model(transform(image).unsqueeze(0).to(device))).softmax(-1)[0]
        top = probs.topk(min(top_k, probs.numel()))
        out.append({"image": str(path), "top": [{"label": classes[i], "index": int(i), "prob": float(p)}
                                                for p, i in zip(top.values.tolist(), top.indices.tolist())]})
    return out


def _is_main() -> bool:
    """Rank 0 of a torchrun job (or a plain process): the one that writes files."""
    return int(os.environ.get("RANK", "0")) == 0
