"""A run folder's rules: one process at a time, nothing of the user's overwritten, no leftovers.

- ``RunLock``: an exclusive ``flock`` on ``RUN_DIR/.lock`` for as long as a run trains (rank 0
  of a torchrun job takes it); a second process on the same folder stops at once, in one line.
- ``check_new_folder``: a new run starts only in a new or empty folder; a folder holding another
  run is pointed to ``--resume``, one holding anything else is refused (it is someone's files).
- ``remove_temporaries``: the ``.NAME.*.tmp`` files an interrupted atomic write leaves.
"""
from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from ..errors import UserError


class RunFolderError(UserError):
    """The run folder cannot be used as asked; the message says why and what to do."""


class RunLock:
    def __init__(self, run_dir: str | Path, enabled: bool = True) -> None:
        self.path, self.enabled, self.fd = Path(run_dir) / ".lock", enabled, None
        self.acquired = False  # this process held the lock (stays True after release)

    def __enter__(self) -> "RunLock":
        if not self.enabled:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunFolderError(f"{self.path.parent} is in use by another sparse-tuning process (pid {holder}); "
                                 "wait for it to finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd, self.acquired = fd, True
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def is_run_config(path: Path) -> bool:
    """A config.json that ``train`` wrote (it records the data's classes), not a user's own file
    of the same nested form."""
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and {"model", "method", "train", "num_classes", "classes"} <= set(cfg)


def is_run_folder(run_dir: str | Path) -> bool:
    return is_run_config(Path(run_dir) / "config.json")


def check_new_folder(out: str | Path) -> None:
    """Raise RunFolderError unless ``out`` may take a new run (missing, or empty)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out} is a file; a run needs a folder")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    entries = [e for e in entries if e != ".lock"]
    if not entries:
        return
    if is_run_config(out / "config.json"):
        raise RunFolderError(f"{out} already holds a run; continue it with --resume {out} or choose another --out")
    raise RunFolderError(f"{out} holds other files ({', '.join(entries[:3])}{', ...' if len(entries) > 3 else ''}); "
                         "a new run needs a new or empty --out folder")


def remove_temporaries(run_dir: str | Path) -> int:
    """Delete what interrupted atomic writes left (``.NAME.*.tmp``); returns how many."""
    removed = 0
    for tmp in Path(run_dir).rglob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink()
            removed += 1
    return removed


def read_json(path: Path, what: str) -> dict:
    """A JSON file of a run, or one line naming the file and what is wrong with it."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunFolderError(f"{path} not found ({what})") from None
    except (OSError, ValueError) as e:
        raise RunFolderError(f"{path} cannot be read ({what}): {e}") from None
    if not isinstance(data, dict):
        raise RunFolderError(f"{path} is not a JSON object ({what})")
    return data
