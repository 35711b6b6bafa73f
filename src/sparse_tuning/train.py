"""The training loop: AdamW on whatever has requires_grad, warmup + cosine, exact resume, DDP.

It knows nothing about Sparse-Tuning beyond an optional keep-rate schedule on
``model.sparse_tuning``; the method decides which parameters train before it is called.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .data import ImageData, SeededDataset, collate_skipping
from .distributed import Dist, EpochSampler, all_reduce_sum, init_distributed


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN loss, an incompatible checkpoint); the message says why."""


@dataclass
class TrainConfig:
    epochs: int = 100                  # passes over the training set
    batch_size: int = 64               # global batch: images per optimizer step over all ranks and micro-batches
    lr: float = 1e-3                   # peak learning rate, reached after the warmup
    min_lr: float = 0.0                # learning rate at the end of the cosine decay
    warmup_epochs: float = 10.0        # linear warmup from 0, in epochs (per-step schedule)
    weight_decay: float = 1e-4         # AdamW decay; never on biases, norms or other 1-d parameters
    grad_accum: int = 1                # micro-batches per optimizer step
    clip_grad: Optional[float] = None  # max global gradient norm; None: no clipping
    amp: str = "off"                   # mixed precision: bf16, fp16 (with a grad scaler) or off
    seed: int = 0                      # data order, augmentation, initialisation of new weights
    keep_rate_warmup: float = 0.0      # epochs over which the keep rate anneals from 1 to its target
    label_smoothing: float = 0.0       # label smoothing of the cross-entropy
    mixup: float = 0.0                 # timm Mixup alpha (0: off)
    cutmix: float = 0.0                # timm CutMix alpha (0: off)
    save_every: int = 0                # optimizer steps between checkpoints; 0: at epoch ends only
    log_every: int = 10                # optimizer steps between metrics lines
    eval_every: int = 1                # epochs between evaluations (the last epoch is always evaluated)
    eval_batch_size: int = 128         # images per evaluation batch and rank
    num_workers: int = 2               # data-loading processes per rank
    device: str = "auto"               # auto (cuda if available), cpu, cuda, cuda:N
    deterministic: bool = False        # torch.use_deterministic_algorithms for bit-exact reruns

    def __post_init__(self) -> None:
        if self.amp not in ("bf16", "fp16", "off"):
            raise ValueError(f"amp={self.amp!r}: expected bf16, fp16 or off")
        for name in ("epochs", "batch_size", "grad_accum", "log_every", "eval_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected an integer >= 1")
        if self.lr <= 0 or self.min_lr < 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            raise ValueError("lr must be > 0; min_lr, weight_decay and warmup_epochs must be >= 0")
        if self.save_every < 0 or self.num_workers < 0 or self.keep_rate_warmup < 0:
            raise ValueError("save_every, num_workers and keep_rate_warmup must be >= 0")
        if self.amp == "fp16" and not resolve_device(self.device).startswith("cuda"):
            raise ValueError("amp=fp16 needs a CUDA GPU; use --amp bf16 on the CPU")


def lr_at(step: int, total: int, warmup: int, peak: float, floor: float) -> float:
    """Linear warmup over `warmup` steps, then cosine decay to `floor` at `total` steps.

    A pure function of the step (rather than a stateful timm scheduler), so resuming needs
    nothing but the step number.
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * t))


def keep_rate_at(step: int, warm_steps: int, target: float) -> float:
    """EViT-style keep-rate warmup: 1 at step 0, linearly down to the target."""
    if warm_steps <= 0:
        return target
    return 1.0 - (1.0 - target) * min(1.0, step / warm_steps)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    if not decay and not no_decay:
        raise TrainingError("the model has no trainable parameters")
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but no CUDA GPU is available")
    return device


def autocast(device: str, amp: str):
    if amp == "off":
        return nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 128, device: str = "cpu", amp: str = "off",
             d: Optional[Dist] = None, num_workers: int = 0) -> dict[str, float]:
    """Top-1, top-5 and loss over the dataset; ranks split it and their sums are reduced.

    Top-5 is left out for tasks of 5 classes or fewer, where it is 100% by construction.
    """
    d = d or Dist()
    was_training = model.training
    model.eval()
    indices = list(range(d.rank, len(dataset), d.world))
    loader = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=collate_skipping)
    sums = [0.0, 0.0, 0.0, 0.0, 0.0]  # correct@1, correct@5, loss, images, skipped
    num_classes = 0
    for images, labels, skipped in loader:
        sums[4] += skipped
        if images is None:
            continue
        images, labels = images.to(device), labels.to(device)
        with autocast(device, amp):
            logits = model(images)
        logits = logits.float()
        num_classes = logits.shape[1]
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        sums[0] += (top[:, 0] == labels).sum().item()
        sums[1] += (top == labels[:, None]).any(dim=1).sum().item()
        sums[2] += F.cross_entropy(logits, labels, reduction="sum").item()
        sums[3] += len(labels)
    model.train(was_training)
    c1, c5, loss, n, skipped = all_reduce_sum(sums, d, device)
    n = max(n, 1)
    result = {"top1": 100 * c1 / n, "top5": 100 * c5 / n, "loss": loss / n, "images": int(n), "skipped": int(skipped)}
    if 0 < num_classes <= 5:
        del result["top5"]
    return result


def top5_text(result: dict[str, Any], sep: str = "") -> str:
    """', top-5 93.10' where the result has a top-5 (tasks of more than 5 classes), else ''."""
    return f"{sep} top-5 {result['top5']:.2f}" if "top5" in result else ""


class MetricsLog:
    """RUN_DIR/metrics.jsonl, one JSON line per logged step and per evaluation (rank 0 only)."""

    def __init__(self, path: Path, enabled: bool, resume_step: int) -> None:
        self.path, self.enabled = path, enabled
        if enabled and resume_step and path.exists():
            # Lines after the checkpoint belong to the interrupted attempt: drop them.
            kept = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= resume_step]
            path.write_text("".join(ln + "\n" for ln in kept))
        elif enabled and not resume_step:
            path.write_text("")

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def train(model: nn.Module, data: ImageData, cfg: TrainConfig, run_dir: str | Path, resume: bool = False,
          metadata: Optional[dict[str, str]] = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``model`` on ``data.train``, evaluate on ``data.eval``; writes into ``run_dir``.

    Returns {"final": eval metrics of the last epoch, "best": best top-1 and its epoch}.
    """
    run_dir = Path(run_dir)
    device = resolve_device(cfg.device)
    d = init_distributed(device)
    if device == "cuda":
        device = f"cuda:{d.local_rank}"
    micro, rest = divmod(cfg.batch_size, d.world * cfg.grad_accum)
    if rest or micro < 1:
        raise ValueError(f"batch_size {cfg.batch_size} must be a multiple of ranks x grad_accum "
                         f"({d.world} x {cfg.grad_accum})")
    steps_per_epoch = len(data.train) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"the training set has {len(data.train)} images, fewer than one batch of {cfg.batch_size}")
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    total_steps = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    st = getattr(model, "sparse_tuning", None)
    target_rate = st.keep_rate if st is not None else 1.0
    keep_warm = round(cfg.keep_rate_warmup * steps_per_epoch)

    model.to(device)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp == "fp16" else None
    net = model
    if d.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[d.local_rank] if device.startswith("cuda") else None)

    mixup = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                      num_classes=data.num_classes)
        criterion: Callable = SoftTargetCrossEntropy()
    else:
        criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    step, best = 0, {"top1": -1.0, "epoch": -1}
    torch.manual_seed(cfg.seed)
    if resume:
        folder = latest_checkpoint(run_dir)
        if folder is None:
            raise TrainingError(f"nothing to resume: {run_dir}/checkpoints has no checkpoint")
        state = load_checkpoint(folder, model)
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        step, best = state["step"], state["best"]
        log(f"resumed from {folder} at step {step} (epoch {step // steps_per_epoch})")
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    metrics = MetricsLog(run_dir / "metrics.jsonl", d.main, step)

    def checkpoint() -> None:
        if d.main:
            state = {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                     "rng": rng_state(), "step": step, "best": best, "train_config": dataclasses.asdict(cfg)}
            save_checkpoint(run_dir, model, state, step, metadata or {})

    final: dict[str, Any] = {}
    progress = _Progress(total_steps, step, enabled=d.main, log=log)
    skipped_total = 0
    for epoch in range(step // steps_per_epoch, cfg.epochs):
        sampler = EpochSampler(len(data.train), cfg.batch_size, cfg.seed, epoch, d,
                               start_batch=step - epoch * steps_per_epoch)
        loader = DataLoader(SeededDataset(data.train), batch_size=micro, sampler=sampler,
                            num_workers=cfg.num_workers, collate_fn=collate_skipping,
                            generator=torch.Generator().manual_seed(cfg.seed + epoch))
        batches = iter(loader)
        net.train()
        for _ in range(sampler.start_batch, steps_per_epoch):
            t0 = time.perf_counter()
            lr = lr_at(step, total_steps, warmup, cfg.lr, cfg.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if st is not None:
                st.keep_rate = keep_rate_at(step, keep_warm, target_rate)
            loss_sum, images_seen = 0.0, 0
            for m in range(cfg.grad_accum):
                images, labels, skipped = next(batches)
                skipped_total += skipped
                if images is None:
                    continue
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                if mixup is not None:
                    if len(images) % 2:  # timm's Mixup pairs samples; a skipped image can leave one over
                        images, labels = images[:-1], labels[:-1]
                    images, labels = mixup(images, labels)
                sync = net.no_sync() if d.enabled and m < cfg.grad_accum - 1 else nullcontext()
                with sync, autocast(device, cfg.amp):
                    loss = criterion(net(images), labels) / cfg.grad_accum
                (scaler.scale(loss) if scaler else loss).backward()
                loss_sum += loss.detach().float()
                images_seen += len(images)
            loss_value, = all_reduce_sum([float(loss_sum)], d, device)
            loss_value /= d.world
            if not math.isfinite(loss_value):
                last = latest_checkpoint(run_dir)
                raise TrainingError(f"the loss became {loss_value} at step {step + 1}; stopped without applying "
                                    f"that update. Last good checkpoint: {last or 'none'} (resume with --resume)")
            if scaler:
                scaler.unscale_(optimizer)
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_((p for g in optimizer.param_groups for p in g["params"]), cfg.clip_grad)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            rate = images_seen * d.world / max(time.perf_counter() - t0, 1e-9)
            progress.update(step, loss_value, rate)
            if step % cfg.log_every == 0 or step == total_steps:
                metrics.write({"step": step, "epoch": epoch, "loss": loss_value, "lr": lr,
                               "images_per_s": rate, "keep_rate": st.keep_rate if st else 1.0,
                               "skipped_images": skipped_total})
            if cfg.save_every and step % cfg.save_every == 0:
                checkpoint()
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            saved_rate = st.keep_rate if st else None
            if st is not None:
                st.keep_rate = target_rate  # evaluate at the rate the model will be used at
            result = evaluate(model, data.eval, cfg.eval_batch_size, device, cfg.amp, d, cfg.num_workers)
            if st is not None:
                st.keep_rate = saved_rate
            if result["top1"] > best["top1"]:
                best = {"top1": result["top1"], "epoch": epoch}
            final = {"epoch": epoch, **result}
            metrics.write({"step": step, "epoch": epoch, "split": data.eval_split, **result})
            progress.message(f"epoch {epoch}: {data.eval_split} top-1 {result['top1']:.2f}{top5_text(result, ',')} "
                             f"(best {best['top1']:.2f} at epoch {best['epoch']})")
        checkpoint()
    progress.close()
    if st is not None:
        st.keep_rate = target_rate
    if d.enabled:
        torch.distributed.barrier()  # every rank done before rank 0 writes the final files
    if skipped_total and d.main:
        log(f"skipped {skipped_total} unreadable training image(s) (--strict-data makes them an error)")
    return {"final": final, "best": best}


class _Progress:
    """tqdm bar on a terminal; plain log lines every so often otherwise."""

    def __init__(self, total: int, start: int, enabled: bool, log: Callable[[str], None]) -> None:
        self.enabled, self.log, self.total = enabled, log, total
        self.bar = None
        self.start, self.started = start, time.monotonic()
        self.last_line = self.started
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def update(self, step: int, loss: float, images_per_s: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_s:.0f}")
        elif time.monotonic() - self.last_line > 30 or step == self.total:
            self.last_line = time.monotonic()
            per_step = (self.last_line - self.started) / max(step - self.start, 1)
            eta = per_step * (self.total - step)
            self.log(f"step {step}/{self.total} loss {loss:.4f} {images_per_s:.0f} images/s "
                     f"ETA {int(eta // 3600)}:{int(eta % 3600 // 60):02d}:{int(eta % 60):02d}")

    def message(self, text: str) -> None:
        if self.enabled:
            (self.bar.write if self.bar is not None else self.log)(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
