"""Optional dependencies (pyproject's extras): a missing one is one line naming what to install,
checked before any work, instead of an ImportError's traceback from deep inside the exporter."""
from __future__ import annotations

import importlib.util

from .errors import UserError

# extra -> the modules it installs that the code imports
EXTRAS = {"export": ("onnx", "onnxscript", "onnxruntime"), "data": ("scipy",), "log": ("tensorboard",), "wandb": ("wandb",)}


class MissingExtra(UserError):
    """An optional dependency is not installed (a user's setup, reported in one line)."""


def require_extra(extra: str, needed_for: str) -> None:
    for module in EXTRAS[extra]:
        if importlib.util.find_spec(module) is None:
            raise MissingExtra(f"{needed_for} needs {module}, which is not installed: pip install -e \".[{extra}]\" "
                               f"in a clone, or pip install \"sparse-tuning[{extra}]\"")


def missing_module(error: ImportError, needed_for: str) -> MissingExtra:
    """The one-line error of an import that failed inside a library (a dataset's reader)."""
    name = (error.name or "").split(".")[0]
    extra = next((e for e, modules in EXTRAS.items() if name in modules), None)
    how = f'pip install -e ".[{extra}]" in a clone, or pip install "sparse-tuning[{extra}]"' if extra else \
        f"pip install {name}"
    return MissingExtra(f"{needed_for} needs {name or error}, which is not installed: {how}")
