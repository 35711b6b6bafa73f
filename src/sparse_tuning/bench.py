"""The efficiency comparison: every method on the same model, data shapes and machine.

Timing: all methods are built once and measured round by round, interleaved, so that drift of a
shared machine hits them alike; each figure is the median over the timed rounds (warm-up rounds
excluded). Memory: on CUDA, ``max_memory_allocated`` after a reset, one method on the GPU at a
time; on CPU, the peak resident memory of a fresh process during the measured phase minus its
resident memory just before it (Linux VmHWM, reset through /proc/self/clear_refs), one process
per method and phase, so no method inherits another's allocator state.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn

from .api import count_params
from .flops import flop_report
from .methods import prepare
from .run import build_architecture, load_weights
from .train import autocast

EAGER = "sparse-tuning (eager)"  # the same method with attention computed by hand in every block


@dataclass
class BenchSetup:
    model: str
    img_size: Optional[int] = None
    batch_size: int = 16
    device: str = "cpu"
    amp: str = "off"
    num_classes: int = 100
    weights: Optional[str] = None  # a local backbone checkpoint; None: random values


def build(setup: BenchSetup, method: str) -> nn.Module:
    """Random weights of the real architecture (speed does not depend on the values), or the
    backbone checkpoint of ``setup.weights`` (resampled to the input size)."""
    model = build_architecture(setup.model, setup.img_size, setup.num_classes)  # meta: no init cost
    model.to_empty(device=setup.device)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    if setup.weights:
        load_weights(model, setup.weights)
    prepare(model, "sparse-tuning" if method == EAGER else method)
    if method == EAGER:
        model.sparse_tuning.fused_attn = False
    return model


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Step:
    """One training step (forward, backward, AdamW step) and one inference batch of a method."""

    def __init__(self, model: nn.Module, setup: BenchSetup) -> None:
        self.model, self.setup = model, setup
        params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=1e-4)
        size = model.patch_embed.img_size
        self.x = torch.randn(setup.batch_size, 3, *size, device=setup.device)
        self.y = torch.randint(0, setup.num_classes, (setup.batch_size,), device=setup.device)

    def train(self) -> float:
        self.model.train()
        _sync(self.setup.device)
        t = time.perf_counter()
        with autocast(self.setup.device, self.setup.amp):
            loss = nn.functional.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        _sync(self.setup.device)
        return time.perf_counter() - t

    @torch.no_grad()
    def infer(self) -> float:
        self.model.eval()
        _sync(self.setup.device)
        t = time.perf_counter()
        with autocast(self.setup.device, self.setup.amp):
            self.model(self.x)
        _sync(self.setup.device)
        return time.perf_counter() - t


def time_methods(setup: BenchSetup, methods: list[str], rounds: int, warmup: int) -> dict[str, dict[str, float]]:
    steps = {m: Step(build(setup, m), setup) for m in methods}
    times: dict[str, dict[str, list[float]]] = {m: {"train": [], "infer": []} for m in methods}
    for r in range(warmup + rounds):
        for phase in ("train", "infer"):
            for m in methods:
                t = getattr(steps[m], phase)()
                if r >= warmup:
                    times[m][phase].append(t)
    return {m: {k: statistics.median(v) for k, v in t.items()} for m, t in times.items()}


def _rss_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_memory_here(setup: BenchSetup, method: str, phase: str, step: Optional[Step] = None) -> float:
    """Peak bytes of one phase (two steps) of one method, in this process."""
    step = step or Step(build(setup, method), setup)
    run = step.train if phase == "train" else step.infer
    if setup.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        run(), run()
        return float(torch.cuda.max_memory_allocated())
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    before = _rss_kib("VmRSS")
    run(), run()
    return float(_rss_kib("VmHWM") - before) * 1024


def measure_phases_here(setup: BenchSetup, method: str, phases: tuple[str, ...]) -> list[float]:
    step = Step(build(setup, method), setup)
    return [measure_memory_here(setup, method, phase, step) for phase in phases]


def measure_memory(setup: BenchSetup, method: str, phase: str) -> float:
    """CUDA: in this process (the peak counter is exact). CPU: in a fresh process."""
    return measure_phases(setup, method, (phase,))[0]


def measure_phases(setup: BenchSetup, method: str, phases: tuple[str, ...]) -> list[float]:
    """Peak bytes of each phase in turn, in one fresh process on CPU (in this one on CUDA)."""
    if setup.device.startswith("cuda"):
        torch.cuda.empty_cache()
        return measure_phases_here(setup, method, phases)
    code = ("import json,sys; from sparse_tuning.bench import BenchSetup, measure_phases_here; "
            "a = json.loads(sys.argv[1]); "
            "print(json.dumps(measure_phases_here(BenchSetup(**a['setup']), a['method'], tuple(a['phases']))))")
    arg = json.dumps({"setup": setup.__dict__, "method": method, "phases": list(phases)})
    proc = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"memory measurement of {method} failed: {proc.stderr[-2000:]}")
    return [float(v) for v in json.loads(proc.stdout.strip().splitlines()[-1])]


def run_bench(setup: BenchSetup, methods: list[str], rounds: int = 10, warmup: int = 2,
              memory: bool = True, accuracy: Optional[dict[str, float]] = None) -> list[dict[str, Any]]:
    """One row per method: parameters, GFLOPs, time, memory, and ratios to sparse-tuning's."""
    timings = time_methods(setup, methods, rounds, warmup)
    rows = []
    for m in methods:
        model = build_architecture(setup.model, setup.img_size, setup.num_classes)
        prepare(model, "sparse-tuning" if m == EAGER else m)
        size = (3, *model.patch_embed.img_size)
        total, trainable = count_params(model)
        row = {"method": m, "params_trainable": trainable, "params_total": total,
               "gflops": flop_report(model, size).gflops,
               "train_step_s": timings[m]["train"], "infer_batch_s": timings[m]["infer"],
               "infer_images_per_s": setup.batch_size / timings[m]["infer"]}
        if memory:
            row["train_memory_mb"] = measure_memory(setup, m, "train") / 2 ** 20
            row["infer_memory_mb"] = measure_memory(setup, m, "infer") / 2 ** 20
        if accuracy and m in accuracy:
            row["top1"] = accuracy[m]
        rows.append(row)
    ref = next((r for r in rows if r["method"] == "sparse-tuning"), None)
    if ref is not None:
        for r in rows:
            r["train_time_vs_st"] = r["train_step_s"] / ref["train_step_s"]
            r["throughput_vs_st"] = r["infer_images_per_s"] / ref["infer_images_per_s"]
            if memory:
                r["train_memory_vs_st"] = r["train_memory_mb"] / max(ref["train_memory_mb"], 1e-9)
    return rows


COLUMNS = [  # (key, header, format)
    ("method", "method", "{}"), ("params_trainable", "trainable params", "{:,}"), ("gflops", "GFLOPs", "{:.2f}"),
    ("train_step_s", "train step (s)", "{:.3f}"), ("train_memory_mb", "train memory (MB)", "{:.0f}"),
    ("infer_images_per_s", "inference (img/s)", "{:.1f}"), ("infer_memory_mb", "inference memory (MB)", "{:.0f}"),
    ("train_time_vs_st", "train time / ST", "{:.2f}x"), ("throughput_vs_st", "throughput / ST", "{:.2f}x"),
    ("train_memory_vs_st", "train memory / ST", "{:.2f}x"), ("top1", "top-1", "{:.2f}"),
]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    cols = [c for c in COLUMNS if any(c[0] in r for r in rows)]
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f.format(r[k]) if k in r else "" for k, _, f in cols) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: str, title: str) -> None:
    """Bar panels like the paper's efficiency figure: time, memory, GFLOPs, parameters (+ accuracy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("train_step_s", "training step (s)"), ("train_memory_mb", "training memory (MB)"),
              ("infer_images_per_s", "inference (images/s)"), ("infer_memory_mb", "inference memory (MB)"),
              ("gflops", "GFLOPs"), ("params_trainable", "trainable parameters (M, log)"), ("top1", "top-1 (%)")]
    panels = [p for p in panels if any(p[0] in r for r in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
    names = [r["method"] for r in rows]
    colors = ["tab:red" if n == "sparse-tuning" else "tab:gray" for n in names]
    for ax, (key, label) in zip(axes, panels):
        values = [r.get(key, 0) / (1e6 if key == "params_trainable" else 1) for r in rows]
        ax.barh(names, values, color=colors)
        if key == "params_trainable":  # full fine-tuning trains ~100x more than the rest
            ax.set_xscale("log")
        if key == "top1":
            ax.set_xlim(0, 100)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel(label.split(" (")[1].rstrip(")") if " (" in label else label, fontsize=8)
        ax.tick_params(labelsize=8)
        ax.invert_yaxis()
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color="tab:red", label="sparse-tuning"), Patch(color="tab:gray", label="other methods")],
               loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
