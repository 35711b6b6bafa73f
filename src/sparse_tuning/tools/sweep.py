"""One trained model across keep rates, no retraining: accuracy with its interval, GFLOPs and
(optionally) throughput at each rate."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from ..errors import UserError
from ..hosts import host_for
from ..training.evaluate import evaluate
from .flops import flop_report
from .stats import accuracy_interval
from .tables import interval_text, markdown_table
from .timing import interleaved_medians


def keep_rate_sweep(model: nn.Module, dataset: Dataset, rates: Sequence[float], batch_size: int = 128,
                    device: str = "cpu", amp: str = "off", timing_rounds: int = 0,
                    progress=None) -> list[dict[str, Any]]:
    """One row per keep rate: top1 (top5 past 5 classes), top1_ci95, images, gflops, and
    images_per_s when timing_rounds > 0. The model's own keep rate is restored afterwards."""
    st = getattr(model, "sparse_tuning", None)
    if st is None or not st.sparsify_at:
        raise UserError("a keep-rate sweep needs a model that sparsifies tokens")
    size = host_for(model).input_size(model)
    x = torch.randn(batch_size, *size, device=device) if timing_rounds else None
    own, rows = st.keep_rate, []
    try:
        for rate in rates:
            st.keep_rate = rate
            result = evaluate(model, dataset, batch_size, device, amp)
            row = {"keep_rate": rate, "top1": result["top1"], **({"top5": result["top5"]} if "top5" in result else {}),
                   "top1_ci95": accuracy_interval(result["top1"], result["images"]), "images": result["images"],
                   "gflops": flop_report(model, size).gflops}
            if timing_rounds:
                with torch.no_grad():
                    seconds = interleaved_medians({"infer": lambda: model(x)}, timing_rounds, 1, device)["infer"]
                row["images_per_s"] = batch_size / seconds
            rows.append(row)
            if progress is not None:
                progress(f"keep rate {rate:g}: top-1 {row['top1']:.2f}, {row['gflops']:.3f} GFLOPs")
    finally:
        st.keep_rate = own
    return rows


def sweep_markdown(rows: Sequence[dict[str, Any]], flops_scale: float = 1.0, flops_unit: str = "GFLOPs") -> str:
    top5 = all("top5" in r for r in rows)
    speed = all("images_per_s" in r for r in rows)
    header = ["keep rate", "top-1 (95% interval)"] + (["top-5"] if top5 else []) + [f"{flops_unit} / image"] \
        + (["images/s"] if speed else [])
    body = [[r["keep_rate"], interval_text(r["top1"], r["top1_ci95"])] + ([f"{r['top5']:.2f}"] if top5 else [])
            + [f"{flops_scale * r['gflops']:.3f}" if flops_scale == 1 else f"{flops_scale * r['gflops']:.1f}"]
            + ([f"{r['images_per_s']:.1f}"] if speed else []) for r in rows]
    return markdown_table(header, body, right=[True] * len(header))


def sweep_run(run_dir, rates: Sequence[float], data: Optional[str] = None, batch_size: int = 32,
              device: str = "auto", timing_rounds: int = 5, out=None, progress=None,
              reduction: Optional[str] = None) -> str:
    """A trained run across keep rates; writes sweep.json, sweep.md and sweep.png into ``out``
    (the run folder by default) and returns the table. ``reduction`` (class-attention, random):
    a run trained on every token, reduced at inference."""
    import json
    from pathlib import Path

    from ..core.reduction import get_rule
    from ..files import atomic_write_bytes
    from ..training.devices import resolve_device
    from ..training.records import read_run_config
    from ..training.run import load_eval_data, load_run

    if read_run_config(run_dir).task != "classify":
        raise UserError(f"sweep measures top-1 across keep rates; {run_dir} segments: eval --run RUN --keep-rate R "
                        "gives its mIoU at each rate")
    from .visualize import keep_rate_plot

    device = resolve_device(device)
    if reduction not in (None, "none") and not get_rule(reduction).has_keep_rate:
        raise UserError(f"sweep varies the keep rate; the {reduction} reduction has none (eval --reduction "
                        f"{reduction} measures it)")
    model, cfg = load_run(run_dir, reduction=reduction)
    st = getattr(model, "sparse_tuning", None)
    if st is None or not st.sparsify_at:
        raise UserError(f"sweep needs a run that sparsifies tokens; this one used --method {cfg.method}")
    if cfg.video.frames:
        raise UserError("sweep measures image runs; for a video run, use eval --keep-rate")
    images = load_eval_data(model, cfg, data)  # loaded once, evaluated at every keep rate
    model.to(device).eval()
    rows = keep_rate_sweep(model, images.eval, rates, batch_size, device, cfg.train.amp,
                           timing_rounds=timing_rounds, progress=progress)
    table = sweep_markdown(rows)
    out = Path(out or run_dir)
    atomic_write_bytes(out / "sweep.json", (json.dumps(rows, indent=1) + "\n").encode())
    atomic_write_bytes(out / "sweep.md", (table + "\n").encode())
    keep_rate_plot(rows, out / "sweep.png", title=f"{cfg.model}, {cfg.method} run: accuracy across keep rates "
                                             f"({rows[0]['images']} {images.eval_split} images)")
    return table
