"""Errors of a run that the command line prints as one line (torch-free, so it can catch them
without loading torch)."""


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN loss, an incompatible checkpoint); the message says why."""


class Interrupted(TrainingError):
    """SIGINT or SIGTERM stopped the run, after a checkpoint; ``signal`` says which."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signal = signum
