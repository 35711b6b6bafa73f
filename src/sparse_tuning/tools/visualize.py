"""Which tokens survived: pictures with the dropped patches greyed out, and foreground recall."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..pictures import GREY, grey_out, run_and_mask  # noqa: F401  (run_and_mask: the demo and tests use it from here)
from ..errors import UserError
from ..files import atomic_path
from ..hosts import host_for


def foreground_recall(masks: np.ndarray, foreground: np.ndarray) -> list[float]:
    """Per step: kept foreground patches / foreground patches, over all images.

    masks (steps, B, P) from pictures.kept_masks; foreground (B, P) booleans.
    """
    total = foreground.sum()
    return [float((m & foreground).sum() / max(total, 1)) for m in masks]


def random_recall(keep_counts: Sequence[tuple[int, int]]) -> list[float]:
    """What a random choice keeps of any patch set: the product of k/M over the steps so far
    (about rho, rho^2, rho^3)."""
    out, share = [], 1.0
    for k, m in keep_counts:
        share *= k / m
        out.append(share)
    return out


def keep_rate_plot(rows: Sequence[dict], path: str | Path, title: str, flops_scale: float = 1.0,
                   flops_unit: str = "GFLOPs", chance: Optional[float] = None) -> None:
    """Top-1 (with its 95% interval, rows' "top1_ci95") and cost per image across keep rates.

    rows: {"keep_rate", "top1", "top1_ci95", "gflops"} each; cost drawn as gflops * flops_scale;
    chance: the top-1 of guessing (percent), drawn as a line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    rates, top1 = [r["keep_rate"] for r in rows], [r["top1"] for r in rows]
    err = [[t - r["top1_ci95"][0] for t, r in zip(top1, rows)], [r["top1_ci95"][1] - t for t, r in zip(top1, rows)]]
    acc = ax.errorbar(rates, top1, yerr=err, fmt="o-", color="tab:red", capsize=3, label="top-1 (95% interval)")
    ax.set_xlabel("keep rate at inference")
    ax.set_ylabel("top-1 accuracy (%)", color="tab:red")
    ax.set_ylim(0, 100)
    handles = [acc]
    if chance is not None:
        handles.append(ax.axhline(chance, color="0.4", linestyle=":", label=f"chance ({chance:.1f}%)"))
    ax2 = ax.twinx()
    (cost,) = ax2.plot(rates, [flops_scale * r["gflops"] for r in rows], "s--", color="tab:blue",
                       label=f"{flops_unit} per image")
    ax2.set_ylabel(f"{flops_unit} per image", color="tab:blue")
    ax2.set_ylim(0, None)
    ax.legend(handles=handles + [cost], loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)




def distinct_labels(paths: Sequence[str | Path]) -> list[str]:
    """Each image's file name, or, where two share a name, its path below the folder they share."""
    paths = [Path(p).resolve() for p in paths]
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    common = Path(os.path.commonpath([p.parent for p in paths]))
    return [str(p.relative_to(common)) for p in paths]


def step_titles(model: torch.nn.Module) -> list[str]:
    """After a forward: 'block 3:\n64 -> 45+1 tokens' per sparsification step (blocks counted from 0,
    as --sparsify-at and model.blocks[i] count them; patch tokens in -> kept + fused token out)."""
    st = model.sparse_tuning
    titles = []
    for i in st.sparsify_at:
        n_in, n_out = (n - st.num_prefix for n in st.last_tokens[i])
        fused = st.config.merge != "drop"
        titles.append(f"block {i}:\n{n_in} -> {n_out - fused}" + ("+1" if fused else "") + " tokens")
    return titles


def kept_tokens_figure(images: np.ndarray, masks: np.ndarray, patch: int, path: str | Path,
                       titles: Optional[Sequence[str]] = None, row_labels: Optional[Sequence[str]] = None,
                       title: Optional[str] = None) -> Path:
    """A grid: one row per image, columns = the image, then the patches still kept after each
    sparsification step (the others greyed out), with a legend saying what grey means.

    images (B, H, W, 3) uint8; masks (steps, B, P) from pictures.kept_masks; titles: one per column.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    B, H, W, _ = images.shape
    steps = masks.shape[0]
    titles = list(titles or ["input"] + [f"after step {i + 1}" for i in range(steps)])
    cell = 1.9
    fig, axes = plt.subplots(B, steps + 1, figsize=(cell * (steps + 1), cell * B + 0.9), squeeze=False)
    for b in range(B):
        panels = [images[b]] + [grey_out(images[b], masks[s, b], patch) for s in range(steps)]
        for j, panel in enumerate(panels):
            ax = axes[b, j]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if b == 0:
                ax.set_title(titles[j], fontsize=7)
        if row_labels:
            axes[b, 0].set_ylabel(row_labels[b], fontsize=7)
    grey = tuple(0.8 * GREY / 255 + 0.2 * v for v in (0.5, 0.5, 0.5))
    fig.legend(handles=[Patch(facecolor=grey, edgecolor="0.5", label="grey: patch not kept (merged into the "
                                                                       "fused token)"),
                        Patch(facecolor="white", edgecolor="0.5", label="clear: patch kept as its own token")],
               loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.suptitle((title or "Tokens kept by token sparsification, step by step")
                 + "\nblocks counted from 0, as --sparsify-at counts them", fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def visualize_images(image_paths: Sequence[str | Path], out_dir: str | Path, run: Optional[str | Path] = None,
                     model: Optional[str] = None, weights: Optional[str] = None, img_size: Optional[int] = None,
                     keep_rate: Optional[float] = None) -> Path:
    """kept_tokens.png of the user's images: with a trained run, or with a pre-trained backbone
    (``model`` by name) that sparsifies tokens with nothing trained."""
    from ..data.images import augment_mode, make_transforms, parse_data_spec, read_user_image, user_image_paths
    from ..training.run import load_run, pretrained_with_sparsification

    if (run is None) == (model is None):
        raise UserError("visualize needs --run RUN_DIR (a trained run) or --model NAME (a pre-trained backbone "
                        "with token sparsification, nothing trained), not both")
    image_paths = user_image_paths(image_paths)  # files as given, folders as their images (as predict reads them)
    images = [read_user_image(p) for p in image_paths]  # every file checked before any work
    if run is not None:
        if weights or img_size:
            raise UserError("--weights and --img-size come from the run; give them with --model instead")
        net, cfg = load_run(run, keep_rate)
        if cfg.task != "classify":
            raise UserError(f"visualize pictures a classification run's kept tokens; {run} segments (train with "
                            "--log tensorboard to see its kept tokens at each evaluation)")
        augment = augment_mode(parse_data_spec(cfg.data), cfg.augment)
        if getattr(net, "sparse_tuning", None) is None or not net.sparse_tuning.sparsify_at:
            raise UserError(f"visualize needs a run that sparsifies tokens; this one used --method {cfg.method}")
    else:
        net = pretrained_with_sparsification(model, weights, img_size, keep_rate)
        augment = "full"  # evaluation transform: resize, centre crop
    _, transform = make_transforms(net, augment)
    x = torch.stack([transform(image) for image in images])
    masks = run_and_mask(net, x)
    # Show the images as the model saw them: the transformed input, un-normalised.
    host = host_for(net)
    dc = host.data_config(net)
    mean, std = torch.tensor(dc["mean"]).view(1, 3, 1, 1), torch.tensor(dc["std"]).view(1, 3, 1, 1)
    shown = ((x * std + mean).clamp(0, 1) * 255).byte().permute(0, 2, 3, 1).numpy()
    titles = [f"input:\n{masks.shape[2]} patches"] + step_titles(net)
    return kept_tokens_figure(np.ascontiguousarray(shown), masks, host.patch_size(net)[0],
                              Path(out_dir) / "kept_tokens.png", titles=titles,
                              row_labels=distinct_labels(image_paths),
                              title=f"Tokens kept at keep rate {net.sparse_tuning.keep_rate:g}")
