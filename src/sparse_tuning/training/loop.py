"""The training loop: AdamW on whatever has requires_grad, warmup + cosine, exact resume, DDP.

It knows nothing about methods: the method decides what trains before the loop starts, and
may pass a ``TrainHook`` (the keep-rate warmup of Sparse-Tuning) that the loop calls around
steps and evaluations. ``Trainer`` holds the three parts: setup (``__init__``), one optimizer
step (``step``) and an evaluation (``evaluate``); ``train`` runs them.
"""
from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ..api import token_metrics
from ..data.images import ImageData, SeededDataset, collate_skipping, quiet_worker, worker_batches
from ..errors import UserError
from ..hosts import host_for, logits_of
from ..methods.base import TrainHook
from .checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig, loggers
from .records import comparable_record, option_defaults
from .devices import autocast, compiled, resolve_device
from .distill import Distillation
from .distributed import EpochSampler, all_reduce_sum, init_distributed
from .errors import Interrupted, TrainingError
from .optimizer import param_groups
from .stopping import StopOnSignal
from .tasks import Classification, Task, backbone_of
from .progress import CsvLog, MetricsLog, Progress, TensorBoardLog, WandbLog, opening_summary, schedule_warnings
from ..text import count


def lr_at(step: int, total: int, warmup: int, peak: float, floor: float) -> float:
    """Linear warmup over `warmup` steps, then cosine decay to `floor` at `total` steps.

    A pure function of the step (rather than a stateful timm scheduler), so resuming needs
    nothing but the step number.
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * t))


class Trainer:
    """One training run of ``model`` on ``data.train``, evaluated on ``data.eval``, into ``run_dir``."""

    def __init__(self, model: nn.Module, data: ImageData, cfg: TrainConfig, run_dir: str | Path,
                 resume: bool = False, metadata: Optional[dict[str, str]] = None,
                 log: Callable[[str], None] = print, hook: Optional[Callable[..., TrainHook]] = None,
                 record: Optional[dict[str, Any]] = None, changeable: tuple[str, ...] = (),
                 choices: Optional[dict[str, str]] = None, distill: Optional[Distillation] = None,
                 task: Optional[Task] = None) -> None:
        """record: the run's whole config, kept in each checkpoint; a resume refuses a config that
        differs from it except in ``changeable`` training fields. choices: why the learning rate,
        warmup, schedule and augmentation have their values (the opening summary prints them).
        task: what the model learns (training/tasks.py; classification by default)."""
        self.model, self.data, self.cfg, self.run_dir, self.log = model, data, cfg, Path(run_dir), log
        self.task = task or Classification()
        self.backbone = backbone_of(model)  # what the hosts, the methods and their hooks read
        self.choices = choices or {}
        self.distill = distill or Distillation(cfg.self_distill, temperature=cfg.distill_temperature)
        if cfg.lr is None:
            raise UserError("TrainConfig.lr is unset: resolve_config fills in the method's default")
        self.metadata, self.record, self.changeable = metadata or {}, record, changeable
        device = resolve_device(cfg.device)
        self.d = d = init_distributed(device)
        self.device = f"cuda:{d.local_rank}" if device == "cuda" else device
        self.micro, rest = divmod(cfg.batch_size, d.world * cfg.grad_accum)
        if rest or self.micro < 1:
            raise UserError(f"batch_size {cfg.batch_size} must be a multiple of ranks x grad_accum "
                            f"({d.world} x {cfg.grad_accum})")
        self.steps_per_epoch = len(data.train) // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise UserError(f"the training set has {len(data.train)} images, fewer than one batch of {cfg.batch_size}")
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.warmup = round(cfg.warmup_epochs * self.steps_per_epoch)
        if hook is None and (cfg.keep_rate_warmup or cfg.keep_rate_random):
            raise UserError("keep_rate_warmup and keep_rate_random are the method's schedule: pass "
                            "hook=get_method(name).train_hook")
        if distill is None and cfg.teacher:
            raise UserError("TrainConfig.teacher names a run folder: pass distill=Distillation(..., teacher=the "
                            "loaded model) (training.run does)")
        if cfg.amp == "fp16" and not self.device.startswith("cuda"):
            raise UserError("amp=fp16 needs a CUDA GPU; use --amp bf16 on the CPU")
        self.hook = hook(self.backbone, cfg, self.steps_per_epoch) if hook is not None else TrainHook()

        if cfg.grad_checkpointing:
            host_for(self.backbone).set_grad_checkpointing(self.backbone, True)
        model.to(self.device)
        if self.distill.teacher is not None:
            self.distill.teacher.to(self.device)
        self.optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay, self.task.head(model),
                                                        self.task.head_lr_scale(cfg)), lr=cfg.lr)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.amp == "fp16" else None
        self.net = model
        if d.enabled:
            ids = [d.local_rank] if self.device.startswith("cuda") else None
            # A segmentation head on earlier blocks leaves the later blocks' adapters without a gradient.
            self.net = nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                                           find_unused_parameters=self.task.name == "segment")
        self.ddp = self.net  # no_sync lives on the DDP wrapper, not on a compiled one
        self.net = compiled(self.net, cfg.compile, cfg.compile_backend)
        self.eval_net = compiled(model, cfg.compile, cfg.compile_backend)  # the same weights, compiled once
        self.mixup, self.criterion = self.task.loss(cfg, data.num_classes)

        self.step_index, self.best = 0, {self.task.primary: -1.0, "epoch": -1}
        self.evaluated_epoch = -1  # the last epoch whose evaluation finished
        self.skipped, self.images_read, self.step_images = 0, 0, 0
        self.stop_signal: Optional[int] = None
        self.epoch_started: Optional[float] = None  # perf_counter at the start of the current epoch
        torch.manual_seed(cfg.seed)
        if resume:
            self._resume()
        if d.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        wanted = loggers(cfg.log) if d.main else []
        sinks = ((TensorBoardLog(self.run_dir / "tensorboard", self.step_index, record),) if "tensorboard" in wanted
                 else ()) + ((CsvLog(self.run_dir / "csv", self.run_dir / "metrics.jsonl"),) if "csv" in wanted else ()) \
            + ((WandbLog(self.run_dir, self.step_index, record),) if "wandb" in wanted else ())
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", d.main, self.step_index, sinks)

    def _resume(self) -> None:
        folder = latest_checkpoint(self.run_dir)
        if folder is None:  # stopped before its first checkpoint: nothing done yet to keep
            self.log(f"{self.run_dir} has no checkpoint yet: the run starts from its first step")
            return
        state = load_checkpoint(folder, self.model)
        self._check_resumable(state, folder)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.step_index, self.best = state["step"], state["best"]
        self.evaluated_epoch = state.get("evaluated_epoch", self.step_index // self.steps_per_epoch - 1)
        self.log(f"resumed from {folder} at step {self.step_index} (epoch {self.step_index // self.steps_per_epoch})")

    def _check_resumable(self, state: dict[str, Any], folder: Path) -> None:
        """The checkpoint belongs to this config and this data, or the resume stops here."""
        saved_steps = state.get("steps_per_epoch", self.steps_per_epoch)
        saved_images = state.get("train_images", len(self.data.train))
        if (saved_steps, saved_images) != (self.steps_per_epoch, len(self.data.train)):
            raise TrainingError(f"the training data changed since {folder} was saved ({saved_images} images, "
                                f"{saved_steps} steps per epoch then; {len(self.data.train)} and {self.steps_per_epoch} "
                                "now); resume with the data the run was trained on")
        if self.record is not None and state.get("run_config") is not None:
            then, now = comparable_record(state["run_config"], self.changeable), comparable_record(self.record, self.changeable)
            # An option added since the checkpoint was written stood at its default then.
            then = {**{k: v for k, v in option_defaults(self.changeable).items() if k not in then}, **then}
            changed = sorted(k for k in set(then) | set(now) if then.get(k) != now.get(k))
            if changed:
                k = changed[0]
                raise TrainingError(f"config.json differs from the run's checkpoint in {k} ({then.get(k)!r} then, "
                                    f"{now.get(k)!r} now); a resume may change only "
                                    + ", ".join("--" + c.replace("_", "-") for c in self.changeable))
        if state["step"] > self.total_steps:
            raise TrainingError(f"the checkpoint is at step {state['step']}, past the {count(self.cfg.epochs, 'epoch')} asked "
                                f"({self.total_steps} steps)")

    def checkpoint(self) -> None:
        if self.d.main:
            state = {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict() if self.scaler else None,
                     "rng": rng_state(), "step": self.step_index, "best": self.best,
                     "train_config": dataclasses.asdict(self.cfg), "steps_per_epoch": self.steps_per_epoch,
                     "evaluated_epoch": self.evaluated_epoch, "run_config": json.dumps(self.record),
                     "train_images": len(self.data.train)}
            save_checkpoint(self.run_dir, self.model, state, self.step_index, self.metadata)

    def loader(self, epoch: int):
        """The loader of the rest of ``epoch``'s batches, from where a resumed run stopped, and its sampler."""
        cfg = self.cfg
        sampler = EpochSampler(len(self.data.train), cfg.batch_size, cfg.seed, epoch, self.d,
                               start_batch=self.step_index - epoch * self.steps_per_epoch)
        loader = DataLoader(SeededDataset(self.data.train), batch_size=self.micro, sampler=sampler,
                            num_workers=cfg.num_workers, collate_fn=collate_skipping, worker_init_fn=quiet_worker,
                            generator=torch.Generator().manual_seed(cfg.seed + epoch))
        return loader, sampler

    def step(self, batches) -> tuple[float, float, float]:
        """One optimizer step over grad_accum micro-batches; returns (loss, lr, images/s)."""
        cfg, d, device = self.cfg, self.d, self.device
        t0 = time.perf_counter()
        lr = lr_at(self.step_index, self.total_steps, self.warmup, cfg.lr, cfg.min_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.hook.before_step(self.step_index)
        loss_sum, images_seen = 0.0, 0
        for m in range(cfg.grad_accum):
            images, labels, skipped = next(batches)
            self.skipped += skipped
            if images is None:
                continue
            self.images_read += len(images)
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if self.mixup is not None:
                if len(images) % 2:  # timm's Mixup pairs samples; a skipped image can leave one over
                    images, labels = images[:-1], labels[:-1]
                images, labels = self.mixup(images, labels)
            sync = self.ddp.no_sync() if d.enabled and m < cfg.grad_accum - 1 else nullcontext()
            with sync, autocast(device, cfg.amp):
                logits = logits_of(self.net(images))
                loss = self.criterion(logits, labels)
                if self.distill.active:  # the teachers' passes run inside, without gradients
                    loss = loss + self.distill.loss(self.model, images, logits)
                loss = loss / cfg.grad_accum
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            loss_sum += loss.detach().float()
            images_seen += len(images)
        # One reduction carries the loss and whether any rank was asked to stop, so that every
        # rank stops after the same step (torchrun signals them one by one).
        loss_value, stopping = all_reduce_sum([float(loss_sum), float(self.stop_signal is not None)], d, device)
        loss_value /= d.world
        if stopping and self.stop_signal is None:
            self.stop_signal = signal.SIGTERM
        if not math.isfinite(loss_value):
            last = latest_checkpoint(self.run_dir)
            after = (f"the last good checkpoint is {last}" if last else "no checkpoint was written yet, so a resume "
                     "starts from the first step") + f"; continue with --resume {self.run_dir} and a lower --lr"
            raise TrainingError(f"the loss became {loss_value} at step {self.step_index + 1}; stopped without "
                                f"applying that update; {after}")
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if cfg.clip_grad:
            params = (p for g in self.optimizer.param_groups for p in g["params"])
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_index += 1
        self.step_images = images_seen * d.world
        return loss_value, lr, images_seen * d.world / max(time.perf_counter() - t0, 1e-9)

    def evaluate(self, epoch: int) -> dict[str, Any]:
        """Evaluate as the model will be used (the hook restores the schedule afterwards)."""
        self.hook.before_eval()
        try:
            result = self.task.evaluate(self.eval_net, self.data.eval, self.cfg.eval_batch_size, self.device,
                                        self.cfg.amp, self.d, self.cfg.num_workers, self.data.num_classes)
        finally:
            self.hook.after_eval()
        primary = self.task.primary
        if result[primary] > self.best[primary]:
            self.best = {primary: result[primary], "epoch": epoch}
        # wall time of the epoch so far, its training and this evaluation (since a resume: its part of the epoch)
        seconds = time.perf_counter() - self.epoch_started if self.epoch_started is not None else None
        self.metrics.write({"step": self.step_index, "epoch": epoch, "split": self.data.eval_split, **result,
                            **({"epoch_s": seconds} if seconds is not None else {})})
        if self.metrics.takes_images:
            self._kept_tokens_picture()
        return {"epoch": epoch, **result}

    KEPT_TOKEN_IMAGES = 4  # evaluation images whose kept tokens are pictured at each evaluation

    def _kept_tokens_picture(self) -> None:
        """The first evaluation images with the patches each reduction step dropped greyed out, as
        the model evaluates them (a model that keeps every token, or a video, has none to show)."""
        from ..pictures import kept_tokens_grid

        host = host_for(self.backbone)
        image_model = host.image_model(self.backbone)
        st = getattr(image_model, "sparse_tuning", None)
        if st is None or not st.sparsify_at or image_model is not self.backbone:
            return
        samples = [self.data.eval[i] for i in range(min(self.KEPT_TOKEN_IMAGES, len(self.data.eval)))]
        samples = [s[0] for s in samples if s is not None]
        if not samples:  # none of them could be read
            return
        x = torch.stack(samples).to(self.device)
        dc = host.data_config(image_model)
        self.hook.before_eval()
        was_training = image_model.training
        try:
            cuda = [self.device] if str(self.device).startswith("cuda") else []
            with torch.random.fork_rng(devices=cuda):  # the random rule's draws leave training's streams alone
                picture = kept_tokens_grid(image_model, x, dc["mean"], dc["std"])
        finally:
            image_model.train(was_training)
            self.hook.after_eval()
        self.metrics.image(f"{self.data.eval_split}/kept_tokens", picture, self.step_index)

    def run(self, about: str = "") -> dict[str, Any]:
        """Train to the last epoch; returns {"final": the last evaluation, "best": the best value of the
        task's primary metric (top-1, mIoU) and its epoch}.

        SIGINT (Ctrl-C) and SIGTERM stop the run after the current step with a checkpoint
        (``Interrupted``); a second one stops at once. The loggers are closed however it ends.
        """
        try:
            return self._run(about)
        finally:
            self.metrics.close()

    def _run(self, about: str) -> dict[str, Any]:
        cfg, d = self.cfg, self.d
        progress = Progress(self.total_steps, self.step_index, enabled=d.main, log=self.log, every=cfg.log_every)
        if d.main:
            for line in opening_summary(self, about) + schedule_warnings(self.cfg):
                progress.message(line)
        final: dict[str, Any] = {}
        with StopOnSignal(self):
            epoch = self.step_index // self.steps_per_epoch
            if self.step_index % self.steps_per_epoch == 0 and epoch > 0 and self._evaluates(epoch - 1) \
                    and self.evaluated_epoch < epoch - 1:
                final = self._end_epoch(epoch - 1, progress)  # stopped between its last step and its evaluation
            for epoch in range(epoch, cfg.epochs):
                self.epoch_started = time.perf_counter()
                loader, sampler = self.loader(epoch)
                read_before = self.images_read
                self.net.train()
                with worker_batches(loader) as batches:
                    for _ in range(sampler.start_batch, self.steps_per_epoch):
                        loss, lr, rate = self.step(batches)
                        progress.update(self.step_index, loss, self.step_images)
                        if self.step_index % cfg.log_every == 0 or self.step_index == self.total_steps:
                            self.metrics.write({"step": self.step_index, "epoch": epoch, "loss": loss, "lr": lr,
                                                "images_per_s": rate, **token_metrics(self.backbone), **self.hook.metrics(),
                                                "skipped_images": self.skipped})
                        if cfg.save_every and self.step_index % cfg.save_every == 0:
                            self.checkpoint()
                        self._stop_if_asked(progress)
                read, = all_reduce_sum([float(self.images_read - read_before)], d, self.device)
                if not read:  # all ranks agree: none of them read an image this epoch
                    raise TrainingError(f"no training image could be read in epoch {epoch} ({self.skipped} skipped); "
                                        "check the data (--strict-data names the first bad file)")
                if self._evaluates(epoch):
                    final = self._end_epoch(epoch, progress)
                else:
                    self.checkpoint()
                self._stop_if_asked(progress)
        progress.close()
        self.hook.before_eval()  # the model leaves as it will be used
        if d.enabled:
            torch.distributed.barrier()  # every rank done before rank 0 writes the final files
        if self.skipped and d.main:
            self.log(f"skipped {self.skipped} unreadable training image(s) (--strict-data makes them an error)")
        if not final:  # resumed after the last evaluation: the checkpoint's results stand
            final = self._last_evaluation()
        return {"final": final, "best": self.best}

    def _evaluates(self, epoch: int) -> bool:
        return (epoch + 1) % self.cfg.eval_every == 0 or epoch + 1 == self.cfg.epochs

    def _end_epoch(self, epoch: int, progress: Progress) -> dict[str, Any]:
        final = self.evaluate(epoch)
        self.evaluated_epoch = epoch
        task = self.task
        progress.message(f"epoch {epoch}: {self.data.eval_split} {task.text(final, ', ')} (best "
                         f"{task.primary_label} {self.best[task.primary]:.2f} at epoch {self.best['epoch']})")
        self.checkpoint()
        return final

    def _last_evaluation(self) -> dict[str, Any]:
        path = self.run_dir / "metrics.jsonl"
        lines = [json.loads(ln) for ln in path.read_text().splitlines() if '"split"' in ln] if path.is_file() else []
        if not lines:
            raise TrainingError(f"{self.run_dir} has no evaluation to report; resume it with more --epochs")
        last = lines[-1]
        return {"epoch": last["epoch"], **{k: v for k, v in last.items() if k not in ("step", "epoch", "split")}}

    def _stop_if_asked(self, progress: Progress) -> None:
        if self.stop_signal is None:
            return
        self.checkpoint()
        progress.close()
        raise Interrupted(self.stop_signal, f"stopped by {signal.Signals(self.stop_signal).name} at step "
                          f"{self.step_index}, checkpoint saved; continue with: sparse-tuning train --resume "
                          f"{self.run_dir}")

def train(model: nn.Module, data: ImageData, cfg: TrainConfig, run_dir: str | Path, resume: bool = False,
          metadata: Optional[dict[str, str]] = None, log: Callable[[str], None] = print,
          hook: Optional[Callable[..., TrainHook]] = None, about: str = "",
          distill: Optional[Distillation] = None, task: Optional[Task] = None) -> dict[str, Any]:
    """Train ``model`` on ``data.train``, evaluate on ``data.eval``; writes into ``run_dir``.

    ``hook``: the method's ``train_hook`` factory (``hook(model, cfg, steps_per_epoch)``), if any;
    ``distill``: the distillation terms (by default ``cfg.self_distill``'s; a ``cfg.teacher`` needs
    its loaded model here); ``task``: classification (default) or ``tasks.Segmentation()``. Returns
    {"final": eval metrics of the last epoch, "best": the best primary metric and its epoch}.
    """
    return Trainer(model, data, cfg, run_dir, resume, metadata, log, hook, distill=distill, task=task).run(about)
