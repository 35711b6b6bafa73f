"""Stopping a run cleanly: the first Ctrl-C or SIGTERM finishes the step and checkpoints."""
from __future__ import annotations

import signal
from typing import Any


class StopOnSignal:
    """Within the block, the first SIGINT / SIGTERM only asks the trainer to stop after its step
    (DataLoader workers ignore both: a Ctrl-C reaches the whole process group); a second one
    interrupts at once. Only in the main thread, where Python delivers signals."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, trainer: Any) -> None:
        self.trainer, self.saved = trainer, {}

    def _handle(self, signum, frame) -> None:
        if self.trainer.stop_signal is not None:
            raise KeyboardInterrupt
        self.trainer.stop_signal = signum
        if self.trainer.d.main:
            self.trainer.log(f"{signal.Signals(signum).name}: stopping after this step with a checkpoint "
                             "(a second one stops at once)")

    def __enter__(self) -> "StopOnSignal":
        import threading

        if threading.current_thread() is threading.main_thread():
            self.saved = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.saved.items():
            signal.signal(s, handler)
