"""The VTAB-1K protocol: every task trained on train800val200 and tested on test, then the table
the field reports (each task, the mean of each group, the mean of the three group means)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .adapter_io import atomic_write_bytes
from .run import resolve_config, train_run

GROUPS: dict[str, tuple[str, ...]] = {
    "Natural": ("cifar", "caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397"),
    "Specialized": ("patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"),
    "Structured": ("clevr_count", "clevr_dist", "dmlab", "kitti", "dsprites_loc", "dsprites_ori",
                   "smallnorb_azi", "smallnorb_ele"),
}
VTAB_TASKS = tuple(t for tasks in GROUPS.values() for t in tasks)


def vtab_table(results: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Markdown table and summary of per-task results ({task: {"best": .., "final": ..}})."""
    summary: dict[str, Any] = {"tasks": results, "groups": {}}
    lines = ["| group | task | best top-1 | final top-1 |", "|---|---|---:|---:|"]
    group_means = {}
    for group, tasks in GROUPS.items():
        done = [t for t in tasks if t in results]
        for t in done:
            lines.append(f"| {group} | {t} | {results[t]['best']:.2f} | {results[t]['final']:.2f} |")
        if done:
            mean = {k: sum(results[t][k] for t in done) / len(done) for k in ("best", "final")}
            group_means[group] = mean
            summary["groups"][group] = {**mean, "tasks": len(done), "complete": len(done) == len(tasks)}
            lines.append(f"| **{group} mean** ({len(done)}/{len(tasks)} tasks) | | {mean['best']:.2f} | {mean['final']:.2f} |")
    if group_means:
        overall = {k: sum(m[k] for m in group_means.values()) / len(group_means) for k in ("best", "final")}
        summary["mean_of_group_means"] = overall
        lines.append(f"| **mean of group means** | | {overall['best']:.2f} | {overall['final']:.2f} |")
    note = ("best = highest test top-1 over the evaluated epochs (what the field reports); "
            "final = test top-1 after the last epoch.")
    return "\n".join(lines) + "\n\n" + note + "\n", summary


def run_vtab(root: str | Path, out: str | Path, tasks: tuple[str, ...], layers: list[dict[str, Any]]) -> str:
    """Train each task in turn (a finished task is not retrained), then write DIR/vtab.md and .json."""
    unknown = [t for t in tasks if t not in VTAB_TASKS]
    if unknown:
        raise ValueError(f"unknown VTAB-1K task(s) {unknown}; known: {', '.join(VTAB_TASKS)}")
    root, out = Path(root), Path(out)
    missing = [t for t in tasks if not (root / t).is_dir()]
    if missing:
        raise FileNotFoundError(f"{root} has no folder for task(s) {missing}")
    results = {}
    for task in tasks:
        cfg = resolve_config({"preset": "vtab"}, *layers, {"data": f"vtab:{root / task}"})
        run_dir = out / task
        done = run_dir / "results.json"
        if done.is_file():
            res = json.loads(done.read_text())
        else:
            resume = (run_dir / "checkpoints" / "latest.json").is_file()
            res = train_run(cfg, run_dir, resume=resume)
        results[task] = {"best": res["best"]["top1"], "final": res["final"]["top1"]}
    table, summary = vtab_table(results)
    atomic_write_bytes(out / "vtab.md", table.encode())
    atomic_write_bytes(out / "vtab.json", json.dumps(summary, indent=1).encode())
    return table
