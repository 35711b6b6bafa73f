"""The VTAB-1K protocol: every task trained on train800val200 and tested on test, then the table
the field reports (each task, the mean of each group, the mean of the three group means)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ..errors import UserError
from ..files import atomic_write_bytes
from ..training.run import resolve_config, train_run
from ..training.run_folder import is_run_folder
from .tables import markdown_table

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
    rows = []
    group_means = {}
    for group, tasks in GROUPS.items():
        done = [t for t in tasks if t in results]
        rows += [[group, t, f"{results[t]['best']:.2f}", f"{results[t]['final']:.2f}"] for t in done]
        if done:
            mean = {k: sum(results[t][k] for t in done) / len(done) for k in ("best", "final")}
            group_means[group] = mean
            summary["groups"][group] = {**mean, "tasks": len(done), "complete": len(done) == len(tasks)}
            rows.append([f"**{group} mean** ({len(done)}/{len(tasks)} tasks)", "", f"{mean['best']:.2f}",
                         f"{mean['final']:.2f}"])
    if group_means:
        overall = {k: sum(m[k] for m in group_means.values()) / len(group_means) for k in ("best", "final")}
        summary["mean_of_group_means"] = overall
        rows.append(["**mean of group means**", "", f"{overall['best']:.2f}", f"{overall['final']:.2f}"])
    note = ("best = highest test top-1 over the evaluated epochs (what the field reports); "
            "final = test top-1 after the last epoch.")
    text = markdown_table(["group", "task", "best top-1", "final top-1"], rows, right=[False, False, True, True])
    return text + "\n\n" + note + "\n", summary


def run_vtab(root: str | Path, out: str | Path, tasks: tuple[str, ...], layers: list[dict[str, Any]],
             log: Callable[[str], None] = print) -> str:
    """Train each task in turn (a finished task is not retrained), then write DIR/vtab.md and .json."""
    unknown = [t for t in tasks if t not in VTAB_TASKS]
    if unknown:
        raise UserError(f"unknown VTAB-1K task(s) {unknown}; known: {', '.join(VTAB_TASKS)}")
    root, out = Path(root), Path(out)
    missing = [t for t in tasks if not (root / t).is_dir()]
    if missing:
        raise FileNotFoundError(f"{root} has no folder for task(s) {missing}")
    configs = {task: resolve_config({"preset": "vtab"}, *layers, {"data": f"vtab:{root / task}"}) for task in tasks}
    results = {}
    for i, task in enumerate(tasks):
        cfg = configs[task]  # every task's options checked before the first one trains
        run_dir = out / task
        done = run_dir / "results.json"
        if done.is_file():
            res = json.loads(done.read_text())
            log(f"task {i + 1}/{len(tasks)} {task}: done before (best top-1 {res['best']['top1']:.2f})")
        else:
            resume = is_run_folder(run_dir)  # started before, finished or not: continued, not restarted
            log(f"task {i + 1}/{len(tasks)} {task}: " + ("resuming" if resume else "training") + f" into {run_dir}")
            res = train_run(cfg, run_dir, resume=resume, log=log)
        results[task] = {"best": res["best"]["top1"], "final": res["final"]["top1"]}
    table, summary = vtab_table(results)
    atomic_write_bytes(out / "vtab.md", table.encode())
    atomic_write_bytes(out / "vtab.json", json.dumps(summary, indent=1).encode())
    return table
