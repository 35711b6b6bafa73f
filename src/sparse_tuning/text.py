"""Words in messages: a count with its noun in the right number."""
from __future__ import annotations


def count(n: float, noun: str) -> str:
    """'1 epoch', '5 epochs', '0.5 epochs', '1,000 images' (the plural adds an s)."""
    number = f"{n:,}" if isinstance(n, int) else f"{n:g}"
    return f"{number} {noun}" if n == 1 else f"{number} {noun}s"
