"""What a user sees and keeps of a run's progress: console lines (or a tqdm bar on a terminal)
and RUN_DIR/metrics.jsonl."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from ..files import atomic_write_text


def _record(line: str):
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class MetricsLog:
    """RUN_DIR/metrics.jsonl, one JSON line per logged step and per evaluation (rank 0 only), and
    the same records to each of ``sinks`` (``write(record)``, ``close()``)."""

    def __init__(self, path: Path, enabled: bool, resume_step: int, sinks: tuple = ()) -> None:
        self.path, self.enabled, self.sinks = path, enabled, sinks
        if enabled and resume_step and path.exists():
            # Lines after the checkpoint belong to the interrupted attempt, and a line cut short
            # (a crash, a full disk) was never whole: drop them.
            kept = [ln for ln in map(_record, path.read_text().splitlines()) if ln and ln.get("step", 0) <= resume_step]
            atomic_write_text(path, "".join(json.dumps(ln) + "\n" for ln in kept))
        elif enabled and not resume_step:
            atomic_write_text(path, "")

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
            for sink in self.sinks:
                sink.write(record)

    def image(self, tag: str, picture, step: int) -> None:
        """To the sinks that take pictures (TensorBoard)."""
        for sink in self.sinks:
            if hasattr(sink, "image"):
                sink.image(tag, picture, step)

    @property
    def takes_images(self) -> bool:
        return any(hasattr(sink, "image") for sink in self.sinks)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


class TensorBoardLog:
    """RUN_DIR/tensorboard: the metrics.jsonl scalars (a training step's as ``train/NAME``, an
    evaluation's as ``SPLIT/NAME``) at their optimizer step, and the run's resolved config as text.
    torch's SummaryWriter (the tensorboard package) writes the event files; a resume purges what
    the interrupted attempt wrote after its checkpoint, so no step appears twice."""

    SKIP = ("step", "epoch", "split")

    def __init__(self, folder: Path, resume_step: int, config: dict[str, Any] | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: TensorBoard drops what the folder holds from this step on (after the checkpoint)
        self.writer = SummaryWriter(str(folder), purge_step=resume_step + 1 if resume_step else None)
        if config is not None and not resume_step:
            self.writer.add_text("config", "```json\n" + json.dumps(config, indent=1) + "\n```", 0)

    def write(self, record: dict[str, Any]) -> None:
        prefix = record.get("split", "train")
        for name, value in record.items():
            if name not in self.SKIP and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{prefix}/{name}", value, record["step"])
        if "split" in record:
            self.writer.flush()  # an evaluation is worth keeping at once

    def image(self, tag: str, picture, step: int) -> None:
        """An (H, W, 3) uint8 picture at an optimizer step."""
        self.writer.add_image(tag, picture, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLog:
    """Weights & Biases: the metrics.jsonl scalars at their optimizer step (``train/NAME``,
    ``SPLIT/NAME``), the resolved config, and the kept-token pictures. Offline with
    ``WANDB_MODE=offline`` (or without a login: wandb asks). The run id is kept in
    RUN_DIR/wandb_run_id, so a resume continues the same W&B run; W&B's history only grows, so
    the steps the interrupted attempt already sent (RUN_DIR/wandb_last_step) are not sent again."""

    def __init__(self, run_dir: Path, resume_step: int, config: dict[str, Any] | None = None) -> None:
        import os
        import uuid

        import wandb

        from ..errors import UserError

        self.id_file, self.step_file = run_dir / "wandb_run_id", run_dir / "wandb_last_step"
        run_id = self.id_file.read_text().strip() if resume_step and self.id_file.is_file() else uuid.uuid4().hex[:8]
        self.sent = int(self.step_file.read_text()) if resume_step and self.step_file.is_file() else 0
        try:
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "sparse-tuning"), id=run_id,
                                  resume="allow", dir=str(run_dir), name=run_dir.name, config=config or {})
        except (wandb.errors.Error, OSError, ValueError) as e:  # no login without a terminal, no network
            raise UserError(f"--log wandb could not start a W&B run ({' '.join(str(e).split())[:200]}); "
                            "WANDB_MODE=offline logs without an account") from None
        atomic_write_text(self.id_file, run_id + "\n")  # only once the run exists

    def write(self, record: dict[str, Any]) -> None:
        step = record["step"]
        if step < self.sent or (step == self.sent and "split" not in record):
            return  # sent by the attempt this run resumes
        prefix = record.get("split", "train")
        values = {f"{prefix}/{k}": v for k, v in record.items()
                  if k not in TensorBoardLog.SKIP and isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.run.log(values, step=step)
        self.sent = step
        atomic_write_text(self.step_file, f"{step}\n")

    def image(self, tag: str, picture, step: int) -> None:
        import wandb

        if step >= self.sent:
            self.run.log({tag: wandb.Image(picture)}, step=step)

    def close(self) -> None:
        self.run.finish()


class CsvLog:
    """RUN_DIR/csv/train.csv and RUN_DIR/csv/SPLIT.csv: metrics.jsonl as tables, one column per
    metric (a per-class list as NAME_0, NAME_1, ...). Written again from metrics.jsonl at every
    evaluation and at the end: a resumed run's tables hold each step once, as metrics.jsonl does."""

    def __init__(self, folder: Path, source: Path) -> None:
        self.folder, self.source = folder, source

    def write(self, record: dict[str, Any]) -> None:
        if "split" in record:
            self.flush()

    def close(self) -> None:
        self.flush()

    def flush(self) -> None:
        import csv
        import io

        if not self.source.is_file():
            return
        tables: dict[str, list[dict[str, Any]]] = {}
        for line in self.source.read_text().splitlines():
            record = _record(line)
            if record is None:
                continue
            flat = {}
            for key, value in record.items():
                if isinstance(value, list):
                    flat.update({f"{key}_{i}": v for i, v in enumerate(value)})
                elif key != "split":
                    flat[key] = value
            tables.setdefault(record.get("split", "train"), []).append(flat)
        self.folder.mkdir(parents=True, exist_ok=True)
        for name, rows in tables.items():
            columns = list(dict.fromkeys(k for row in rows for k in row))
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
            atomic_write_text(self.folder / f"{name}.csv", buffer.getvalue())


class Progress:
    """A tqdm bar on a terminal; otherwise (a log file, a cluster job) one line every ``every``
    optimizer steps and at the last one.

    Throughput is images over wall time since the previous line, counted from the end of the
    first step after a start or resume: that step also waits for the loader's workers to start
    and would read as a few images per second.
    """

    def __init__(self, total: int, start: int, enabled: bool, log: Callable[[str], None], every: int = 10) -> None:
        self.enabled, self.log, self.total, self.every = enabled, log, total, every
        self.bar = None
        self.start, self.started = start, time.monotonic()
        self.window_start, self.window_images = None, 0  # None until the first step has ended
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def update(self, step: int, loss: float, images: int) -> None:
        """After optimizer step ``step`` (1-based), which read ``images`` images over all ranks."""
        if not self.enabled:
            return
        now = time.monotonic()
        if self.window_start is None:
            self.window_start, self.window_images = now, 0
            rate = None
        else:
            self.window_images += images
            rate = self.window_images / max(now - self.window_start, 1e-9)
        rate_text = f"{rate:.0f} images/s" if rate is not None else "first step"
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.0f}" if rate is not None else "-")
        elif step % self.every == 0 or step == self.total:
            per_step = (now - self.started) / max(step - self.start, 1)
            eta = per_step * (self.total - step)
            self.log(f"step {step}/{self.total} loss {loss:.4f} {rate_text} "
                     f"ETA {int(eta // 3600)}:{int(eta % 3600 // 60):02d}:{int(eta % 60):02d}")
            if rate is not None:  # the next line's rate: the steps after this one
                self.window_start, self.window_images = now, 0

    def message(self, text: str) -> None:
        if self.enabled:
            (self.bar.write if self.bar is not None else self.log)(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def opening_summary(trainer: Any, about: str = "") -> list[str]:
    """What a run (a ``loop.Trainer``) is about to do, before its first step; each resolved choice
    with its reason."""
    from ..api import count_params
    from ..text import count

    total, trainable = count_params(trainer.model)
    cfg, data = trainer.cfg, trainer.data
    why = lambda name: f" ({trainer.choices[name]})" if name in trainer.choices else ""
    return [
        f"train: {about + ', ' if about else ''}on {trainer.device}"
        + (f" ({trainer.d.world} processes)" if trainer.d.enabled else ""),
        f"data: {len(data.train):,} training images, {len(data.eval):,} {data.eval_split} images, "
        f"{data.num_classes} classes",
        f"parameters: {trainable:,} trainable of {total:,} ({100 * trainable / max(total, 1):.2f}%)",
        f"schedule: {count(cfg.epochs, 'epoch')} x {count(trainer.steps_per_epoch, 'step')} of {cfg.batch_size} "
        f"images; lr {cfg.lr:g}{why('lr')}, warmup {count(cfg.warmup_epochs, 'epoch')}{why('warmup_epochs')}, "
        f"cosine to {cfg.min_lr:g}{why('schedule')}",
        *([f"augmentation: {data.augment}{why('augment')}"] if getattr(data, "augment", None) else []),
        *([f"distillation: {trainer.distill.describe()}"] if trainer.distill.active else []),
        f"run folder: {trainer.run_dir}",
    ]


def schedule_warnings(cfg: Any) -> list[str]:
    """One line for a schedule that cannot do what it says (a ``TrainConfig``)."""
    from ..text import count

    if cfg.warmup_epochs >= cfg.epochs:
        return [f"warning: the learning-rate warmup ({count(cfg.warmup_epochs, 'epoch')}) is not shorter than the run "
                f"({count(cfg.epochs, 'epoch')}): the peak learning rate {cfg.lr:g} is never reached "
                "(--warmup-epochs sets it)"]
    return []
