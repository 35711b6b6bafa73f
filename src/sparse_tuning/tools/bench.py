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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from ..api import count_params
from ..files import atomic_path, atomic_write_text
from ..hosts import build_architecture, host_for, logits_of
from ..methods import get_method, method_names, prepare
from ..training.devices import autocast, compiled
from .flops import flop_report
from .tables import markdown_table
from .timing import interleaved_times, percentile, synchronize, time_call

REFERENCE = "sparse-tuning"  # the method every ratio column compares with
EAGER = " (eager)"  # "METHOD (eager)": the same method with attention computed by hand in every block


def bench_rows() -> tuple[str, ...]:
    """What ``bench --methods all`` measures: every method, cheapest first, then the method with
    eager attention (the cost of not using the fused kernel)."""
    return method_names() + (REFERENCE + EAGER,)


def split_row(row: str) -> tuple[str, bool]:
    """('sparse-tuning', True) for 'sparse-tuning (eager)'; checks the method exists. A row may
    name a token reduction after the method: 'lora+tome' (see row_config)."""
    eager = row.endswith(EAGER)
    name = row[:-len(EAGER)] if eager else row
    get_method(name.partition("+")[0])
    return name, eager


def row_config(row: str, setup: "BenchSetup"):
    """The method and the Sparse-Tuning or reduction config of a row: 'METHOD' runs the method
    as it is; 'METHOD+RULE' under the reduction RULE at the setup's keep rate or ToMe r."""
    from ..core.reduction import get_rule
    from ..methods import method_config

    name, _ = split_row(row)
    method, _, reduction = name.partition("+")
    fields: dict[str, Any] = {"reduction": reduction} if reduction else {}
    if reduction and "tome_r" in get_rule(reduction).fields:
        fields["tome_r"] = tuple(setup.tome_r)
    # the keep rate reaches the rows that rank tokens: a rule that does, or a method that does by default
    ranks = get_rule(reduction).has_keep_rate if reduction else get_method(method).reduces_tokens
    keep = setup.keep_rate if ranks else None
    return method, method_config(method, keep, **fields) if (reduction or keep is not None) else None


def eager_attention(model: nn.Module) -> None:
    """Every attention module of the model on its explicit path (timm's ``fused_attn`` switch)."""
    for m in host_for(model).attention_modules(model):
        m.fused_attn = False


@dataclass
class BenchSetup:
    model: str
    img_size: Optional[int] = None
    batch_size: int = 16
    device: str = "cpu"
    amp: str = "off"
    num_classes: int = 100
    weights: Optional[str] = None  # a local backbone checkpoint; None: random values
    compile: bool = False          # torch.compile each method's model before timing it
    keep_rate: Optional[float] = None  # rows 'METHOD+class-attention' and '+random': the share kept (None: 0.7)
    tome_r: tuple = (8,)           # rows 'METHOD+tome': tokens merged per block


def build(setup: BenchSetup, method: str) -> nn.Module:
    """Random weights of the real architecture (speed does not depend on the values), or the
    backbone checkpoint of ``setup.weights`` (resampled to the input size)."""
    model = build_architecture(setup.model, setup.img_size, setup.num_classes)  # meta: no init cost
    model.to_empty(device=setup.device)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    if setup.weights:
        host_for(model).load_weights(model, setup.weights)
    name, config = row_config(method, setup)
    prepare(model, name, config)
    if split_row(method)[1]:
        eager_attention(model)
    return model


class Step:
    """One training step (forward, backward, AdamW step) and one inference batch of a method."""

    def __init__(self, model: nn.Module, setup: BenchSetup) -> None:
        self.model, self.setup = model, setup
        params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=1e-4)
        self.x = torch.randn(setup.batch_size, *host_for(model).input_size(model), device=setup.device)
        self.y = torch.randint(0, setup.num_classes, (setup.batch_size,), device=setup.device)
        self.one = self.x[:1].clone()
        self.net = compiled(model, setup.compile)

    def train_step(self) -> None:
        self.model.train()
        with autocast(self.setup.device, self.setup.amp):
            loss = nn.functional.cross_entropy(logits_of(self.net(self.x)), self.y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer_batch(self) -> None:
        self.model.eval()
        with autocast(self.setup.device, self.setup.amp):
            self.net(self.x)

    @torch.no_grad()
    def latency_batch(self) -> None:
        """One image: what an online service waits for (fixed per-forward costs weigh most)."""
        self.model.eval()
        with autocast(self.setup.device, self.setup.amp):
            self.net(self.one)

    def train(self) -> float:
        return time_call(self.train_step, self.setup.device)

    def infer(self) -> float:
        return time_call(self.infer_batch, self.setup.device)


def time_methods(setup: BenchSetup, methods: list[str], rounds: int, warmup: int) -> dict[str, dict[str, float]]:
    """Median seconds of a training step and of an inference batch per method, rounds interleaved."""
    steps = {m: Step(build(setup, m), setup) for m in methods}
    phases = {"train": "train_step", "infer": "infer_batch", "latency": "latency_batch"}
    calls = {(m, phase): getattr(steps[m], fn) for m in methods for phase, fn in phases.items()}
    times = interleaved_times(calls, rounds, warmup, setup.device)
    out = {m: {phase: statistics.median(times[(m, phase)]) for phase in phases} for m in methods}
    for m in methods:
        out[m]["latency_p90"] = percentile(times[(m, "latency")], 90)
    return out


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
        synchronize(setup.device)
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
    code = ("import json,sys; from sparse_tuning.tools.bench import BenchSetup, measure_phases_here; "
            "a = json.loads(sys.argv[1]); "
            "print(json.dumps(measure_phases_here(BenchSetup(**a['setup']), a['method'], tuple(a['phases']))))")
    arg = json.dumps({"setup": setup.__dict__, "method": method, "phases": list(phases)})
    proc = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"memory measurement of {method} failed: {proc.stderr[-2000:]}")
    return [float(v) for v in json.loads(proc.stdout.strip().splitlines()[-1])]


def run_bench(setup: BenchSetup, methods: list[str], rounds: int = 10, warmup: int = 2,
              memory: bool = True, accuracy: Optional[dict[str, dict[str, Any]]] = None,
              progress: Optional[Callable[[str], None]] = None) -> list[dict[str, Any]]:
    """One row per method: parameters, GFLOPs, time, memory, and ratios to sparse-tuning's.

    accuracy: method -> run_accuracies' entry; progress: called with a line per stage.
    """
    say = progress or (lambda line: None)
    probe = build_architecture(setup.model, setup.img_size, setup.num_classes)  # meta device: no cost
    host_for(probe).check_supported(probe)
    for m in methods:  # every name checked, and tried on the host, before any work
        prepare(build_architecture(setup.model, setup.img_size, setup.num_classes), *row_config(m, setup))
    say(f"timing {len(methods)} methods: {warmup} warm-up and {rounds} timed rounds, interleaved")
    timings = time_methods(setup, methods, rounds, warmup)
    rows = []
    for i, m in enumerate(methods):
        model = build_architecture(setup.model, setup.img_size, setup.num_classes)
        prepare(model, *row_config(m, setup))
        size = host_for(model).input_size(model)
        total, trainable = count_params(model)
        row = {"method": m, "params_trainable": trainable, "params_total": total,
               "gflops": flop_report(model, size).gflops,
               "train_step_s": timings[m]["train"], "infer_batch_s": timings[m]["infer"],
               "infer_images_per_s": setup.batch_size / timings[m]["infer"],
               "latency_ms": 1000 * timings[m]["latency"], "latency_p90_ms": 1000 * timings[m]["latency_p90"]}
        if memory:
            say(f"memory of {m} ({i + 1}/{len(methods)}): training, then inference, each in a fresh process"
                if not setup.device.startswith("cuda") else f"memory of {m} ({i + 1}/{len(methods)})")
            row["train_memory_mb"] = measure_memory(setup, m, "train") / 2 ** 20
            row["infer_memory_mb"] = measure_memory(setup, m, "infer") / 2 ** 20
        if accuracy and m in accuracy:
            row.update(accuracy[m])
        rows.append(row)
    ref = next((r for r in rows if r["method"] == REFERENCE), None)
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
    ("latency_ms", "batch-1 latency (ms, median)", "{:.2f}"), ("latency_p90_ms", "batch-1 latency (ms, p90)", "{:.2f}"),
    ("train_time_vs_st", "train time / ST", "{:.2f}x"), ("throughput_vs_st", "throughput / ST", "{:.2f}x"),
    ("train_memory_vs_st", "train memory / ST", "{:.2f}x"), ("top1", "top-1", "{:.2f}"),
]


def bench_table(rows: list[dict[str, Any]]) -> str:
    """The bench rows as a Markdown table, then where each accuracy comes from."""
    cols = [c for c in COLUMNS if any(c[0] in r for r in rows)]
    cell = lambda r, k, f: (f"{r['top1']:.2f} ± {r['top1_sd']:.2f}" if k == "top1" and "top1_sd" in r
                            else f.format(r[k]) if k in r else "")
    text = markdown_table([h for _, h, _ in cols], [[cell(r, k, f) for k, _, f in cols] for r in rows],
                          right=[k != "method" for k, _, _ in cols])
    sources = [f"- top-1 of {r['method']}: best test top-1 of "
               + (f"the run `{r['runs'][0]}`" if len(r["runs"]) == 1 else
                  f"{len(r['runs'])} runs (mean ± sd): " + ", ".join(f"`{x}`" for x in r["runs"]))
               for r in rows if "runs" in r]
    return text + ("\n\n" + "\n".join(sources) if sources else "")


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
    colors = ["tab:red" if n == REFERENCE else "tab:gray" for n in names]
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

    fig.legend(handles=[Patch(color="tab:red", label=REFERENCE), Patch(color="tab:gray", label="other methods")],
               loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def machine_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    import platform

    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads ({platform.platform()})"


def run_accuracies(run_dirs: list[str]) -> dict[str, dict[str, Any]]:
    """Best test top-1 of trained runs by method: {"top1": mean over the method's runs, "top1_sd"
    (with two runs or more), "runs": the run folders it comes from}."""
    import statistics

    from ..training.records import read_run_config

    found: dict[str, list[tuple[float, str]]] = {}
    for run in run_dirs:
        cfg = read_run_config(run)
        results = Path(run) / "results.json"
        if not results.is_file():
            raise FileNotFoundError(f"{results} not found: the run has not finished")
        if cfg.task != "classify":
            from ..errors import UserError

            raise UserError(f"--runs joins top-1 to the table; {run} is a segmentation run")
        found.setdefault(cfg.method, []).append((json.loads(results.read_text())["best"]["top1"], str(run)))
    out = {}
    for method, runs in found.items():
        values = [v for v, _ in runs]
        out[method] = {"top1": statistics.mean(values), "runs": [r for _, r in runs],
                       **({"top1_sd": statistics.stdev(values)} if len(values) > 1 else {})}
    return out


def bench_markdown(meta: dict, rows: list[dict], table: Callable[[list[dict]], str] = bench_table) -> str:
    """bench.md: how it was measured (command, date, machine), then the table."""
    setup = meta["setup"]
    lines = [f"# {setup['model']}, {setup['device']}, batch {meta.get('batch_sizes', setup['batch_size'])}, "
             f"amp {setup['amp']}", "",
             f"- command: `{meta['command']}`", f"- date: {meta['date']}", f"- machine: {meta['machine']}",
             f"- torch: {meta['torch']}",
             f"- timing: median of {meta['rounds']} interleaved rounds after {meta['warmup']} warm-up round(s)",
             f"- memory: {meta['memory']}", "", table(rows), ""]
    return "\n".join(lines)


def write_bench(out: str | Path, meta: dict, rows: list[dict], table: Callable[[list[dict]], str] = bench_table,
                draw: Optional[Callable[[list[dict], str, str], None]] = None) -> Path:
    """bench.json, bench.csv, bench.md and bench.png in ``out`` (``table`` and ``draw``: another
    table and picture, as ``bench --engine`` has)."""
    import csv

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    import io

    atomic_write_text(out / "bench.json", json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=sorted({k for r in rows for k in r}))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "bench.csv", buf.getvalue())
    atomic_write_text(out / "bench.md", bench_markdown(meta, rows, table))
    setup = meta["setup"]
    (draw or plot)(rows, str(out / "bench.png"), f"{setup['model']} on {meta['machine']}, batch "
                   f"{meta.get('batch_sizes', setup['batch_size'])}")
    return out


def bench_meta(setup: BenchSetup, command: str, rounds: int, warmup: int) -> dict:
    """How a bench was measured: command, date, machine, versions, timing and memory rules."""
    import datetime

    return {"command": command, "date": datetime.date.today().isoformat(), "machine": machine_name(setup.device),
            "torch": torch.__version__, "setup": setup.__dict__, "rounds": rounds, "warmup": warmup,
            "memory": "cuda max_memory_allocated" if setup.device.startswith("cuda") else
                      "peak RSS of a fresh process during the phase minus RSS before it (VmHWM)"}
