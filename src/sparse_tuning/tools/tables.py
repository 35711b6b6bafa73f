"""Markdown tables, one way for every report (bench, sweep, vtab, demo, benchmarks)."""
from __future__ import annotations

from typing import Any, Iterable, Sequence


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], right: Sequence[bool] = ()) -> str:
    """A GitHub table; ``right[i]`` right-aligns column i (numbers), left otherwise."""
    header = list(header)
    align = [("---:" if i < len(right) and right[i] else "---") for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def interval_text(value: float, interval: Sequence[float]) -> str:
    """'81.20 (79.4-82.9)': a top-1 with its 95% interval."""
    return f"{value:.2f} ({interval[0]:.1f}-{interval[1]:.1f})"
