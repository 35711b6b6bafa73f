"""Errors of a run that the command line prints as one line (torch-free, so it can catch them
without loading torch)."""


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN loss, an incompatible checkpoint); the message says why."""
