"""`sparse-tuning demo`: the whole idea on a laptop, offline, in minutes.

A 12-block ViT is pre-trained once on the source shapes task (cached), then fine-tuned frozen on
the target task by several methods through the normal training loop; the report gives accuracy
and cost per method, the foreground recall of token sparsification, and pictures of the tokens
that survive.
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch.utils.data import TensorDataset

from ..api import count_params
from ..data.images import ImageData
from ..data.shapes import TASKS, ShapesDataset, patch_foreground
from ..files import atomic_write_bytes
from ..text import count
from ..hosts import host_for, host_named
from ..methods import get_method, prepare
from ..training.config import TrainConfig
from ..training.evaluate import evaluate
from ..training.loop import lr_at, train
from .bench import REFERENCE
from .flops import flop_report
from .stats import accuracy_interval, proportions_differ
from .sweep import keep_rate_sweep, sweep_markdown
from .timing import interleaved_medians
from .visualize import (foreground_recall, keep_rate_plot, kept_tokens_figure, random_recall, run_and_mask,
                        step_titles)

MODEL = "st_vit_micro_patch4_32"
CACHE_VERSION = "demo-v1"
METHODS = ("full", "linear", "adaptformer", "ts-only", "da-only", "sparse-tuning")
FINETUNE_LR = 2e-3       # the recipe every method shares...
FULL_LR = 2e-4           # ...but full fine-tuning: all weights move, the shared rate wrecks the backbone
KEEP_RATES = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass
class DemoPlan:
    name: str
    pretrain_images: int     # source-task images (generated once, reused every step)
    pretrain_steps: int      # optimizer steps of the source-task pre-training
    finetune_images: int     # target-task training images
    finetune_epochs: int
    test_images: int         # target-task test images
    batch_size: int = 64
    # A run too short to learn the task (--quick): it shows the pipeline runs end to end, and its
    # report and pictures say that its accuracies measure nothing; no throughput is timed.
    smoke_test: bool = False


FULL = DemoPlan("full", pretrain_images=3_000, pretrain_steps=400, finetune_images=1_500, finetune_epochs=2,
                test_images=500)
QUICK = DemoPlan("quick", pretrain_images=256, pretrain_steps=30, finetune_images=128, finetune_epochs=1,
                 test_images=64, batch_size=32, smoke_test=True)
CHANCE = 100 / len(TASKS["target"])  # top-1 of guessing, the floor every accuracy is read against
SMOKE = "smoke test (--quick): too short to learn the task, its accuracies measure nothing"


def cache_dir() -> Path:
    """$SPARSE_TUNING_CACHE, else $XDG_CACHE_HOME/sparse-tuning, else ~/.cache/sparse-tuning."""
    if os.environ.get("SPARSE_TUNING_CACHE"):
        return Path(os.environ["SPARSE_TUNING_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sparse-tuning"


def new_model(num_classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return host_named(MODEL).create(MODEL, num_classes=num_classes)


def materialize(task: str, split: str, n: int) -> tuple[TensorDataset, ShapesDataset]:
    """The first n images of a task as tensors (drawn once, not every epoch), and their source."""
    source = ShapesDataset(task, split, n)
    items = [source[i] for i in range(n)]
    return TensorDataset(torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])), source


def pretrained_backbone(plan: DemoPlan, log: Callable[[str], None]) -> dict[str, torch.Tensor]:
    """The source-task backbone: from the cache, or pre-trained now (all weights) and cached.

    A ViT trained from scratch on a few thousand images barely leaves chance level in minutes,
    so the pre-training adds dense supervision: a temporary linear head on every patch token
    predicts the shape class under that patch (or background). This trains the backbone alone;
    fine-tuning afterwards goes through the normal training loop.
    """
    path = cache_dir() / CACHE_VERSION / f"backbone-{plan.name}.safetensors"
    if path.is_file():
        log(f"pre-trained backbone: {path} (cached)")
        return load_file(str(path))
    log(f"pre-training the backbone on the source task ({plan.pretrain_steps} steps of {plan.batch_size} images); "
        f"cached afterwards in {path.parent}")
    source = ShapesDataset("source", "train", plan.pretrain_images)
    x, y, patches = [], [], []
    for i in range(plan.pretrain_images):
        image, mask, label = source.sample(i)
        x.append(source[i][0])
        y.append(label)
        patches.append(torch.from_numpy(patch_foreground(mask, 4).astype(np.int64)) * (label + 1))
    x, y, patches = torch.stack(x), torch.tensor(y), torch.stack(patches)
    model = new_model(len(TASKS["source"]))
    host = host_for(model)
    patch_head = torch.nn.Linear(host.width(model), len(TASKS["source"]) + 1)
    params = list(model.parameters()) + list(patch_head.parameters())
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.05)
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for step in range(plan.pretrain_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, plan.pretrain_steps, plan.pretrain_steps // 15, 2e-3, 0.0)
        idx = torch.randint(0, len(x), (plan.batch_size,), generator=g)
        feats = host.features(model, x[idx])
        loss = F.cross_entropy(host.head(model, feats), y[idx]) + \
            F.cross_entropy(patch_head(feats[:, host.num_prefix_tokens(model):]).flatten(0, 1), patches[idx].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % 50 == 0 or step + 1 == plan.pretrain_steps:
            eta = (time.perf_counter() - t0) / (step + 1) * (plan.pretrain_steps - step - 1)
            log(f"  pre-training step {step + 1}/{plan.pretrain_steps} loss {loss.item():.3f} ETA {eta:.0f} s")
    test, _ = materialize("source", "test", plan.test_images)
    top1 = evaluate(model, test, 256)["top1"]
    log(f"  source-task test top-1 {top1:.2f} (chance {100 / len(TASKS['source']):.1f})")
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save(tensors, metadata={"source_top1": str(top1)}))
    return tensors


def finetune(method: str, backbone: dict[str, torch.Tensor], data: ImageData, plan: DemoPlan, work: Path,
             log: Callable[[str], None]) -> tuple[torch.nn.Module, dict]:
    """One method through the normal training loop, from the same backbone and recipe as the others."""
    model = new_model(data.num_classes)
    head = {name for name, p in model.named_parameters()
            if any(p is q for h in host_for(model).classifier(model) for q in h.parameters())}
    model.load_state_dict({k: v for k, v in backbone.items() if k not in head}, strict=False)  # a new head
    prepare(model, method)
    lr = FULL_LR if get_method(method).trains_backbone else FINETUNE_LR
    cfg = TrainConfig(epochs=plan.finetune_epochs, batch_size=plan.batch_size, lr=lr, warmup_epochs=0.2,
                      weight_decay=0.01, num_workers=0, eval_every=plan.finetune_epochs, log_every=50)
    t0 = time.perf_counter()
    results = train(model, data, cfg, work / method, log=lambda s: None, hook=get_method(method).train_hook)
    seconds = time.perf_counter() - t0
    total, trainable = count_params(model)
    final = results["final"]
    row = {"method": method, "top1": final["top1"], "top1_ci95": accuracy_interval(final["top1"], final["images"]),
           "test_images": final["images"],
           "lr": lr, "params_trainable": trainable,
           "gflops": flop_report(model, (3, 32, 32)).gflops, "train_seconds": seconds}
    log(f"  {method:14s} top-1 {row['top1']:6.2f} (chance {CHANCE:.1f})  trained in {seconds:5.1f} s")
    return model, row


def inference_throughput(models: dict[str, torch.nn.Module], x: torch.Tensor, rounds: int = 10,
                         warmup: int = 2) -> dict[str, float]:
    """Images/s per method as bench times them: warm-up rounds, then the median of timed rounds,
    interleaved across methods."""
    for model in models.values():
        model.eval()
    with torch.no_grad():
        seconds = interleaved_medians({name: (lambda m=model: m(x)) for name, model in models.items()}, rounds,
                                      warmup)
    return {name: len(x) / t for name, t in seconds.items()}


def peak_memory_mb(method: str, batch_size: int) -> dict[str, float]:
    """Inference, then training peak of the method in one fresh process (see tools/bench.py)."""
    from .bench import BenchSetup, measure_phases

    setup = BenchSetup(MODEL, batch_size=batch_size, num_classes=len(TASKS["target"]))
    infer, train_ = measure_phases(setup, method, ("infer", "train"))
    return {"infer": infer / 2 ** 20, "train": train_ / 2 ** 20}


def run_demo(out: str | Path, quick: bool = False, log: Callable[[str], None] = print) -> dict:
    plan = QUICK if quick else FULL
    out = Path(out)
    work = out / "runs"
    t_start = time.perf_counter()
    backbone = pretrained_backbone(plan, log)
    train_set, _ = materialize("target", "train", plan.finetune_images)
    test_set, test = materialize("target", "test", plan.test_images)
    data = ImageData(train_set, test_set, len(TASKS["target"]), list(TASKS["target"]), "test")
    log(f"fine-tuning the frozen backbone on the target task: {', '.join(METHODS)}")
    trained, rows = {}, []
    for method in METHODS:
        trained[method], row = finetune(method, backbone, data, plan, work, log)
        rows.append(row)
    if not plan.smoke_test:
        speed = inference_throughput(trained, test_set.tensors[0][:plan.batch_size])
        for row in rows:
            mem = peak_memory_mb(row["method"], plan.batch_size)
            row["infer_images_per_s"] = speed[row["method"]]
            row["train_memory_mb"], row["infer_memory_mb"] = mem["train"], mem["infer"]

    st_model = trained["sparse-tuning"]
    recall = measure_recall(st_model, test, n=min(256, len(test)))
    images, masks = sample_figure(st_model, test)
    figure = kept_tokens_figure(images, masks, patch=4, path=out / "kept_tokens.png",
                                titles=["input:\n64 patches"] + step_titles(st_model),
                                row_labels=[TASKS["target"][test.sample(i)[2]] for i in range(len(images))],
                                title="Demo: tokens the trained Sparse-Tuning model keeps (keep rate "
                                      f"{st_model.sparse_tuning.keep_rate:g})" + (f"\n{SMOKE}" if plan.smoke_test else ""))
    sweep = demo_sweep(st_model, test_set, out / "keep_rate.png", plan)
    elapsed = time.perf_counter() - t_start
    report = write_report(out, plan, rows, recall, sweep, elapsed)
    log(f"report: {report}; pictures: {figure}, {out / 'keep_rate.png'} ({elapsed:.0f} s in all)")
    return {"rows": rows, "recall": recall, "sweep": sweep, "seconds": elapsed}


def measure_recall(model, test: ShapesDataset, n: int) -> dict:
    """Share of foreground patches kept after each step, against a random choice."""
    x = torch.stack([test[i][0] for i in range(n)])
    fg = np.stack([patch_foreground(test.sample(i)[1], 4) for i in range(n)])
    masks = run_and_mask(model, x)
    counts = [(k.shape[1], m) for k, m in zip(model.sparse_tuning.kept_tokens(), _tokens_before_steps(model))]
    return {"model": foreground_recall(masks, fg), "random": random_recall(counts), "images": n,
            "blocks": list(model.sparse_tuning.sparsify_at),
            "foreground_patches_per_image": float(fg.sum(1).mean())}


def _tokens_before_steps(model) -> list[int]:
    st = model.sparse_tuning
    return [st.last_tokens[i][0] - st.num_prefix for i in st.sparsify_at]


def sample_figure(model, test: ShapesDataset, n: int = 6):
    images = np.stack([test.sample(i)[0] for i in range(n)])
    masks = run_and_mask(model, torch.stack([test[i][0] for i in range(n)]))
    return images, masks


def demo_sweep(model, test: TensorDataset, path: Path, plan: DemoPlan) -> list[dict]:
    """Accuracy and GFLOPs of the trained model across keep rates, no retraining."""
    target = model.sparse_tuning.keep_rate
    rows = keep_rate_sweep(model, test, KEEP_RATES, batch_size=256)
    keep_rate_plot(rows, path, f"Demo: Sparse-Tuning trained at keep rate {target:g}, evaluated at others "
                               f"({len(test)} test images)" + (f"\n{SMOKE}" if plan.smoke_test else ""),
                   flops_scale=1000, flops_unit="MFLOPs", chance=CHANCE)
    return rows


def write_report(out: Path, plan: DemoPlan, rows: list[dict], recall: dict, sweep: list[dict], seconds: float) -> Path:
    timed = "infer_images_per_s" in rows[0]
    lines = [f"# Sparse-Tuning demo ({plan.name})", ""]
    if plan.smoke_test:
        lines += [f"**This is a smoke test.** `--quick` pre-trains for {plan.pretrain_steps} steps and fine-tunes "
                  f"on {plan.finetune_images} images: too little to learn the task, so the accuracies below sit "
                  f"near chance ({CHANCE:.1f}%) and measure nothing but that every step runs. No throughput or "
                  "memory is measured. `sparse-tuning demo` without `--quick` gives the real report.", ""]
    lines += [f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
              f"{platform.platform()}; torch {torch.__version__}; {seconds:.0f} s in all.",
              f"Backbone: `{MODEL}` (12 blocks, width 64, 32x32 images, 64 patches), pre-trained on the source "
              f"shapes ({', '.join(TASKS['source'])}), frozen; target task: {', '.join(TASKS['target'])} "
              f"({len(TASKS['target'])} classes: chance is {CHANCE:.1f}%).",
              f"Pre-training: {plan.pretrain_steps} steps of {plan.batch_size} images (classification plus a "
              f"per-patch shape/background head, dropped afterwards).",
              f"Fine-tuning: {count(plan.finetune_epochs, 'epoch')} x {plan.finetune_images} images, batch "
              f"{plan.batch_size}, the same recipe for every method (AdamW, learning rate {FINETUNE_LR:g}) except full "
              f"fine-tuning (learning rate {FULL_LR:g}: it moves every weight); test: {plan.test_images} images.",
              "",
              "Top-1 comes with its 95% interval (Wilson, over the test images: one seed, so it does not include "
              "the spread between training runs), next to chance. The last column compares each method with "
              "Sparse-Tuning (two-proportion test at 95%): a *tie* is a difference inside the noise of this test set."
              + (" Inference throughput: images/s at batch "
                 f"{plan.batch_size}, 2 warm-up and 10 timed rounds interleaved across methods, the median." if timed
                 else ""), "",
              "| method | top-1 (95% interval) | chance | vs Sparse-Tuning | trainable params | MFLOPs / image "
              "| training time (s) |" + (" inference (img/s) | train memory (MB) | inference memory (MB) |" if timed else ""),
              "|---|---:|---:|---|---:|---:|---:|" + ("---:|---:|---:|" if timed else "")]
    ref = next(r for r in rows if r["method"] == REFERENCE)
    for r in rows:
        if r is ref:
            verdict = "—"
        elif proportions_differ(r["top1"], ref["top1"], r["test_images"], ref["test_images"]):
            verdict = "higher" if r["top1"] > ref["top1"] else "lower"
        else:
            verdict = "tie"
        r["vs_sparse_tuning"] = verdict
        low, high = r["top1_ci95"]
        line = (f"| {r['method']} | {r['top1']:.2f} ({low:.1f}-{high:.1f}) | {CHANCE:.1f} | {verdict} | "
                f"{r['params_trainable']:,} | {1000 * r['gflops']:.1f} | {r['train_seconds']:.1f} |")
        if timed:
            line += f" {r['infer_images_per_s']:.0f} | {r['train_memory_mb']:.0f} | {r['infer_memory_mb']:.0f} |"
        lines.append(line)
    if timed:
        lines += ["", "Memory: peak resident memory during two steps, minus what the process held before, in one "
                  "fresh process per method (inference first, then training)."]
    lines += ["", "## Foreground recall", "",
              f"Share of the foreground patches (>= 25% shape; {recall['foreground_patches_per_image']:.1f} per image "
              f"on average) still kept after each sparsification step of the trained Sparse-Tuning model, over "
              f"{recall['images']} test images, next to what a random choice of the same size keeps.", "",
              "| step (block, from 0) | kept by the model | kept by a random choice |", "|---|---:|---:|"]
    for i, (block, m, r) in enumerate(zip(recall["blocks"], recall["model"], recall["random"])):
        lines.append(f"| {i + 1} (block {block}) | {m:.3f} | {r:.3f} |")
    lines += ["", "## Keep rate at inference (no retraining)", "", f"Chance: {CHANCE:.1f}%.", "",
              sweep_markdown(sweep, flops_scale=1000, flops_unit="MFLOPs")]
    lines += ["", "![kept tokens](kept_tokens.png)", "", "![keep rate](keep_rate.png)", ""]
    path = out / "report.md"
    atomic_write_bytes(path, "\n".join(lines).encode())
    atomic_write_bytes(out / "report.json", json.dumps({"plan": asdict(plan), "chance": CHANCE, "rows": rows,
                                                        "recall": recall, "sweep": sweep, "seconds": seconds},
                                                       indent=1).encode())
    return path
