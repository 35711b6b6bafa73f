"""Inference engines side by side (``bench --engine``): each method, and the plain model it is
compared with, run by PyTorch eager, torch.compile, ONNX Runtime fp32 and ONNX Runtime int8, at
several batch sizes, in one process, with one thread count for every engine.

Every (method, engine) pair is built and exported once; at each batch size their calls are timed
round by round, interleaved (tools/timing.py), so that drift of a shared machine hits them
alike. A batch's latency is the wall time of one call; throughput is the batch over its median.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from ..errors import UserError
from ..hosts import build_architecture, host_for, logits_of
from .bench import BenchSetup, build, row_config, split_row
from .timing import interleaved_times, percentile

ENGINES = ("torch", "compiled", "onnxruntime", "onnxruntime-int8")
DENSE = "dense"  # the plain model: every ratio's reference


def check_engines(engines: list[str]) -> None:
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise UserError(f"engine {unknown[0]!r}: expected some of {', '.join(ENGINES)}")
    if any(e.startswith("onnxruntime") for e in engines):
        from ..extras import require_extra

        require_extra("export", "--engine onnxruntime")


def plain_model(setup: BenchSetup) -> nn.Module:
    """The model without any method: random values of the real architecture (or setup.weights)."""
    model = build_architecture(setup.model, setup.img_size, setup.num_classes)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    if setup.weights:
        host_for(model).load_weights(model, setup.weights)
    return model


def inference_model(setup: BenchSetup, row: str) -> nn.Module:
    """A row's model as deployed (LoRA merged), eval mode, CPU."""
    from .export import for_inference

    if row == DENSE:
        return plain_model(setup).eval()
    return for_inference(build(setup, row), row_config(row, setup)[0])


def engine_call(model: nn.Module, engine: str, folder: Path, name: str, threads: Optional[int]) -> Callable:
    """model(x) -> logits on ``engine``; ONNX files are written under ``folder``."""
    from .export import Logits, example_input, write_onnx

    if engine in ("torch", "compiled"):
        net = torch.compile(model) if engine == "compiled" else model

        def call(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return logits_of(net(x))
        return call
    from .onnx_engine import OnnxModel, quantize

    path = write_onnx(Logits(model).eval(), example_input(model), folder / f"{name}.onnx")
    if engine == "onnxruntime-int8":
        path = quantize(path, folder / f"{name}.int8.onnx", "int8")
    return OnnxModel(path, threads)


def run_engine_bench(setup: BenchSetup, methods: list[str], engines: list[str], batch_sizes: list[int],
                     rounds: int = 10, warmup: int = 2, threads: Optional[int] = None,
                     progress: Optional[Callable[[str], None]] = None) -> list[dict[str, Any]]:
    """One row per (method, engine, batch size), the plain model first: GFLOPs, median and p90
    latency of a batch, throughput, and its ratio to the plain model on the same engine and to the
    plain model on PyTorch eager (fp32), at the same batch size."""
    from .flops import flop_report

    say = progress or (lambda line: None)
    check_engines(engines)
    if setup.device != "cpu":
        raise UserError("bench --engine compares CPU engines (ONNX Runtime's CPU provider): use --device cpu")
    if threads:
        torch.set_num_threads(threads)
    rows_of = [DENSE] + [m for m in methods if m != DENSE]
    for m in rows_of[1:]:
        split_row(m)
    wanted = list(dict.fromkeys(["torch", *engines]))  # eager PyTorch is every ratio's last reference
    calls: dict[tuple[str, str], Callable] = {}
    gflops = {}
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows_of:
            model = inference_model(setup, row)
            size = host_for(model).input_size(model)
            gflops[row] = flop_report(model, size).gflops
            for engine in wanted:
                say(f"preparing {row} on {engine}")
                calls[(row, engine)] = engine_call(model, engine, Path(tmp), f"{row.replace('+', '_')}-{engine}", threads)
        rows = []
        for batch in batch_sizes:
            x = torch.randn(batch, *size)
            say(f"batch {batch}: {len(calls)} (method, engine) pairs, {warmup} warm-up and {rounds} timed rounds")
            times = interleaved_times({k: (lambda f=f: f(x)) for k, f in calls.items()}, rounds, warmup)
            for (row, engine), t in times.items():
                p50, p90 = percentile(t, 50), percentile(t, 90)
                rows.append({"method": row, "engine": engine, "batch_size": batch, "gflops": gflops[row],
                             "latency_p50_ms": 1000 * p50, "latency_p90_ms": 1000 * p90,
                             "infer_images_per_s": batch / p50})
    by = {(r["method"], r["engine"], r["batch_size"]): r for r in rows}
    for r in rows:
        r["throughput_vs_dense"] = r["infer_images_per_s"] / by[(DENSE, r["engine"], r["batch_size"])]["infer_images_per_s"]
        r["throughput_vs_dense_torch"] = r["infer_images_per_s"] / by[(DENSE, "torch", r["batch_size"])]["infer_images_per_s"]
        r["latency_vs_dense"] = r["latency_p50_ms"] / by[(DENSE, r["engine"], r["batch_size"])]["latency_p50_ms"]
    keep = set(engines)
    return [r for r in rows if r["engine"] in keep]


COLUMNS = [("method", "method", "{}"), ("engine", "engine", "{}"), ("batch_size", "batch", "{}"),
           ("gflops", "GFLOPs", "{:.2f}"), ("latency_p50_ms", "latency p50 (ms)", "{:.2f}"),
           ("latency_p90_ms", "latency p90 (ms)", "{:.2f}"), ("infer_images_per_s", "img/s", "{:.1f}"),
           ("throughput_vs_dense", "vs dense, same engine", "{:.2f}x"),
           ("throughput_vs_dense_torch", "vs dense fp32 torch", "{:.2f}x")]


def engine_table(rows: list[dict[str, Any]]) -> str:
    from .tables import markdown_table

    return markdown_table([h for _, h, _ in COLUMNS], [[f.format(r[k]) for k, _, f in COLUMNS] for r in rows],
                          right=[k not in ("method", "engine") for k, _, _ in COLUMNS])


def plot_engines(rows: list[dict[str, Any]], path: str | Path, title: str) -> None:
    """Throughput against batch size, one line per (method, engine): engines by colour, the plain
    model dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..files import atomic_path

    import textwrap

    fig, ax = plt.subplots(figsize=(7.5, 5))
    colours = dict(zip(ENGINES, ("tab:gray", "tab:purple", "tab:blue", "tab:green")))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    markers = dict(zip(methods, "osv^Dp*"))
    for key in dict.fromkeys((r["method"], r["engine"]) for r in rows):
        line = sorted((r for r in rows if (r["method"], r["engine"]) == key), key=lambda r: r["batch_size"])
        ax.plot([r["batch_size"] for r in line], [r["infer_images_per_s"] for r in line], marker=markers[key[0]],
                linestyle="--" if key[0] == DENSE else "-", color=colours[key[1]], label=f"{key[0]}, {key[1]}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({r["batch_size"] for r in rows}), [str(b) for b in sorted({r["batch_size"] for r in rows})])
    ax.set_xlabel("batch size (images)")
    ax.set_ylabel("inference throughput (images/s)")
    ax.set_title("\n".join(textwrap.wrap(title + " (colour: engine; marker: method; dashed: the plain model)", 90)),
                 fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
