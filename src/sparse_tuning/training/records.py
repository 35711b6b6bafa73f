"""Run configs on disk: a user's YAML or JSON options file, a run's recorded config.json, and the
record a resume compares against its checkpoint's."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..data.options import VideoConfig
from .config import SECTIONS, RunConfig, TrainConfig
from .validate import check_values


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Options from a YAML or JSON file (keys as in config.json, nested or flat; dashes or underscores)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    else:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise UserError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of options")
    norm = lambda d: {k.replace("-", "_"): (norm(v) if isinstance(v, dict) else v) for k, v in d.items()}
    return norm(data)


def read_run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.json)")
    try:
        recorded = json.loads(path.read_text())
        if not isinstance(recorded, dict):
            raise UserError("not a JSON object")
        train = dict(recorded.get("train") or {})
        if train.get("clip_grad") == 0:  # written before 0 was refused: it meant no clipping
            train["clip_grad"] = None
        recorded["train"] = train
        top = {k: v for k, v in recorded.items() if k not in SECTIONS}
        check_values(RunConfig, top)
        for section, cls in (("video", VideoConfig), ("train", TrainConfig)):
            check_values(cls, recorded.get(section) or {}, section)
        return RunConfig.from_dict(recorded)
    except ValueError as e:
        raise UserError(f"{path} cannot be read as a run's config: {e}") from None


# What a resume may find changed without a word: where the run happens (device, workers, batch
# size of evaluation), how often it reports, and where its data now lives (the classes and the
# number of images are checked instead).
MACHINE_FIELDS = ("train.device", "train.num_workers", "train.log_every", "train.save_every", "train.eval_batch_size",
                  "train.log",
                  "train.compile", "train.compile_backend", "train.grad_checkpointing", "download", "data", "weights")


def option_defaults(changeable: tuple[str, ...]) -> dict[str, Any]:
    """Every option's default as comparable_record flattens it: what a record written before an
    option existed ran with. (The warmup and learning rate, resolved from the run, are always
    recorded and never taken from here.)"""
    defaults = RunConfig(train=TrainConfig(lr=1e-3)).to_dict()
    defaults["sparse_tuning"] = {}  # resolved per method, recorded since the first version
    return comparable_record(defaults, changeable)


def comparable_record(record: Any, changeable: tuple[str, ...]) -> dict[str, Any]:
    """A run config flattened to 'section.field' keys, without what a resume may change."""
    # through JSON either way, so a tuple in a config compares equal to the list its file holds
    record = json.loads(record if isinstance(record, str) else json.dumps(record))
    flat = {}
    for key, value in record.items():
        if key == "choices":  # why the options have their values, not an option
            continue
        if isinstance(value, dict) and key in ("train", "video", "baseline", "sparse_tuning"):
            flat.update({f"{key}.{k}": v for k, v in value.items() if not (key == "train" and k in changeable)})
        else:
            flat[key] = value
    return {k: v for k, v in flat.items() if k not in MACHINE_FIELDS}
