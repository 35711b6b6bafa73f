"""The segmentation benchmark's report and figures (seg.py's phases report and figures)."""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import compare  # noqa: E402  (benchmarks/real: paired verdicts)

BOUNDARY_PX = 3  # a pixel within this many pixels of a class change counts as a boundary pixel


def keeps_every_token(name: str) -> bool:
    return "@" not in name


def collect(args: argparse.Namespace) -> dict[str, Any]:
    from seg import CONFIGS

    configs: dict[str, Any] = {}
    for name in CONFIGS:
        cells = sorted((args.cells / name).glob("seed*.json"))
        records = [json.loads(c.read_text()) for c in cells]
        if not records:
            continue
        miou = [r["miou"] for r in records]
        iou = [[r["iou"][k] for r in records if r["iou"][k] is not None] for k in range(len(records[0]["iou"]))]
        configs[name] = {"miou": miou, "seeds": [r["seed"] for r in records],
                         "pixel_accuracy": [r["pixel_accuracy"] for r in records],
                         "iou_mean": [statistics.mean(v) if v else None for v in iou], "lr": records[0]["lr"],
                         "keeps_every_token": keeps_every_token(name)}
    return configs


def phase_report(args: argparse.Namespace, argv: list[str]) -> None:
    from scenes import CLASSES

    configs = collect(args)
    timing_path = args.cells / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {"rows": {}}
    for name, c in configs.items():
        c.update(timing["rows"].get(name, {}))
    dense = [n for n, c in configs.items() if c["keeps_every_token"] and len(c["miou"]) >= 2]
    reference = max(dense, key=lambda n: statistics.mean(configs[n]["miou"])) if dense else None
    for name, c in configs.items():
        if reference and name != reference:
            ref = dict(zip(configs[reference]["seeds"], configs[reference]["miou"]))
            paired = [(m, ref[s]) for s, m in zip(c["seeds"], c["miou"]) if s in ref]
            if len(paired) >= 2:
                c["vs_reference"] = compare.paired_verdict([p[0] for p in paired], [p[1] for p in paired])
    boundary_path = args.cells / "boundary.json"
    results = {"meta": meta(args, argv, timing), "classes": list(CLASSES), "reference": reference, "configs": configs,
               "boundary": json.loads(boundary_path.read_text()) if boundary_path.is_file() else None}
    compare.write_results(args.out, results, markdown(results), {"miou_vs_throughput.png": plot})


def meta(args: argparse.Namespace, argv: list[str], timing: dict[str, Any]) -> dict[str, Any]:
    import datetime
    import platform

    import timm
    import torch

    from seg import MODEL

    return {"command": "python benchmarks/segment/seg.py " + " ".join(argv), "date": datetime.date.today().isoformat(),
            "machine": f"{platform.machine()}, {timing.get('threads', torch.get_num_threads())} threads",
            "torch": torch.__version__, "timm": timm.__version__, "model": MODEL, "img_size": args.img_size,
            "train_samples": args.train_samples, "test_scenes": args.eval_samples, "epochs": args.epochs,
            "batch_size": args.batch_size, "timing_batch_size": timing.get("batch_size"),
            "timing_date": timing.get("date")}


def _ms(values: list[float]) -> str:
    mean = statistics.mean(values)
    return f"{mean:.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"


def markdown(results: dict[str, Any]) -> str:
    m, ref = results["meta"], results["reference"]
    lines = [f"# Segmentation on {m['model']} at {m['img_size']}px ({m['date']})", "",
             f"`{m['command']}`; {m['machine']}; torch {m['torch']}, timm {m['timm']}.", "",
             f"{m['train_samples']} training scenes, {m['test_scenes']} held-out scenes, {m['epochs']} epochs, batch "
             f"{m['batch_size']}; mIoU in % (mean ± sd over seeds); throughput at batch {m['timing_batch_size']} "
             f"on random inputs. Difference to {ref} (the best method that keeps every token), paired by seed; "
             "a difference a paired t-test cannot tell from zero is a tie.", "",
             "| configuration | seeds | mIoU | pixel acc. | GFLOPs | img/s | vs best every-token |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name, c in results["configs"].items():
        vs = c.get("vs_reference")
        verdict = "reference" if name == ref else (f"{vs['mean_difference']:+.1f} ± {vs['sd']:.1f} ({vs['verdict']})"
                                                   if vs else "-")
        cost = (f"{c['gflops']:.2f} | {c['infer_images_per_s']:.1f}" if "gflops" in c else "- | -")
        lines.append(f"| {name} | {len(c['miou'])} | {_ms(c['miou'])} | {_ms(c['pixel_accuracy'])} | {cost} | {verdict} |")
    b = results.get("boundary")
    if b:
        lines += ["", f"## Boundaries and interiors (seed 0, {b['scenes']} held-out scenes; boundary: within "
                      f"{b['band_px']} px of a class change)",
                  "", "| configuration | boundary pixel acc. | interior pixel acc. |", "|---|---:|---:|"]
        lines += [f"| {n} | {v['boundary']:.1f} | {v['interior']:.1f} |" for n, v in b["configs"].items()]
    lines += ["", "## IoU per class (mean over seeds)", "",
              "| configuration | " + " | ".join(results["classes"]) + " |",
              "|---|" + "---:|" * len(results["classes"])]
    for name, c in results["configs"].items():
        lines.append(f"| {name} | " + " | ".join("-" if v is None else f"{v:.1f}" for v in c["iou_mean"]) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, c in results["configs"].items():
        if "infer_images_per_s" not in c:
            continue
        sd = statistics.stdev(c["miou"]) if len(c["miou"]) > 1 else 0
        ax.errorbar(c["infer_images_per_s"], statistics.mean(c["miou"]), yerr=sd, fmt="o" if c["keeps_every_token"] else "s",
                    color="tab:blue" if c["keeps_every_token"] else "tab:orange", capsize=3)
        ax.annotate(name, (c["infer_images_per_s"], statistics.mean(c["miou"])), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    ax.plot([], [], "o", color="tab:blue", label="keeps every token")
    ax.plot([], [], "s", color="tab:orange", label="reduces tokens")
    m = results["meta"]
    ax.set_xlabel(f"inference throughput (images/s, batch {m['timing_batch_size']}, {m['machine']})")
    ax.set_ylabel("held-out mIoU (%, mean ± sd over seeds)")
    ax.set_title(f"Segmentation: mIoU vs speed, {m['model']} at {m['img_size']}px")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- figures -------------------------------------------------------------------------------

def colour(labels):
    import numpy as np

    from sparse_tuning.training.segmentation import voc_palette

    palette = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)
    return palette[labels]


def legend(fig, names, indices=None) -> None:
    """Below the panels: each class's colour (the VOC palette by class index) and name."""
    from matplotlib.patches import Patch

    from sparse_tuning.training.segmentation import voc_palette

    palette = voc_palette()
    indices = list(range(len(names))) if indices is None else indices
    handles = [Patch(facecolor=[v / 255 for v in palette[3 * i:3 * i + 3]], edgecolor="0.5", label=names[i])
               for i in indices]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7, frameon=False)


def phase_figures(args: argparse.Namespace) -> None:
    """masks.png (held-out scenes), boundary.json (seed 0) and, with --voc, voc_photos.png."""
    from sparse_tuning.training.run import load_run

    shown = [n for n in ("da-only", "sparse-tuning@0.9", "sparse-tuning@0.7") if (args.runs / n / "seed0").is_dir()]
    models = {n: load_run(args.runs / n / "seed0")[0] for n in shown}
    if models:
        boundary(args, models)
        scenes_figure(args, models)
    if args.voc:
        voc_figure(args)


def predictions(model, dataset, indices):
    import torch

    with torch.no_grad():
        return [model(dataset[i][0][None]).argmax(1)[0].numpy() for i in indices]


def boundary(args: argparse.Namespace, models: dict) -> None:
    """Pixel accuracy near class changes vs inside regions, on the held-out scenes (seed 0)."""
    import numpy as np
    from scipy.ndimage import binary_dilation

    from sparse_tuning.data.segmentation import load_segmentation_data

    data = load_segmentation_data(args.data, (args.img_size, args.img_size), (0.485, 0.456, 0.406),
                                  (0.229, 0.224, 0.225))
    indices = range(0, len(data.eval), 4)  # 250 of the 1,000 held-out scenes
    masks = [data.eval[i][1].numpy() for i in indices]
    edges = []
    for m in masks:
        change = np.zeros_like(m, dtype=bool)
        change[:, 1:] |= m[:, 1:] != m[:, :-1]
        change[1:, :] |= m[1:, :] != m[:-1, :]
        edges.append(binary_dilation(change, iterations=BOUNDARY_PX))
    out = {"band_px": BOUNDARY_PX, "scenes": len(masks), "configs": {}}
    for name, model in models.items():
        hits = {"boundary": [0, 0], "interior": [0, 0]}
        for p, m, e in zip(predictions(model, data.eval, indices), masks, edges):
            for key, where in (("boundary", e), ("interior", ~e)):
                hits[key][0] += int((p[where] == m[where]).sum())
                hits[key][1] += int(where.sum())
        out["configs"][name] = {k: 100 * h / max(n, 1) for k, (h, n) in hits.items()}
    (args.cells / "boundary.json").write_text(json.dumps(out, indent=1) + "\n")


def scenes_figure(args: argparse.Namespace, models: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    from scenes import CLASSES

    from sparse_tuning.data.segmentation import load_segmentation_data

    data = load_segmentation_data(args.data, (args.img_size, args.img_size), (0.485, 0.456, 0.406),
                                  (0.229, 0.224, 0.225))
    indices = [0, 1, 2, 3]
    preds = {n: predictions(m, data.eval, indices) for n, m in models.items()}
    cols = 2 + len(models)
    fig, axes = plt.subplots(len(indices), cols, figsize=(2.2 * cols, 2.2 * len(indices)))
    for r, i in enumerate(indices):
        image_path, _ = data.eval.pairs[i]
        panels = [np.asarray(Image.open(image_path).convert("RGB").resize((args.img_size,) * 2)),
                  colour(data.eval[i][1].numpy())] + [colour(preds[n][r]) for n in models]
        for c, panel in enumerate(panels):
            axes[r, c].imshow(panel)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(["scene", "truth", *[f"{n} (seed 0)" for n in models]][c], fontsize=8)
    legend(fig, CLASSES)
    fig.suptitle("Held-out scenes: predicted masks next to the truth", fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(args.out / "masks.png", dpi=110)
    plt.close(fig)


def voc_figure(args: argparse.Namespace) -> None:
    """The three VOC 2011 photos of labelme's examples: each predicted by a run trained on the other
    two (leave one out; 224px, 40 epochs), with Sparse-Tuning at keep rate 0.7 and Dense Adapters
    alone. A picture of the pipeline on real photos and VOC's own layout, not a benchmark."""
    import shutil

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    from sparse_tuning.training.config import resolve_config
    from sparse_tuning.training.run import predict_run, train_run

    names = sorted(p.stem for p in (args.voc / "JPEGImages").glob("*.jpg"))
    rows = []
    for held in names:
        root = args.runs / "voc" / held
        if not (root / "JPEGImages").is_dir():
            for sub in ("JPEGImages", "SegmentationClass"):
                shutil.copytree(args.voc / sub, root / sub)
            (root / "ImageSets" / "Segmentation").mkdir(parents=True)
            (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(n for n in names if n != held) + "\n")
            (root / "ImageSets/Segmentation/val.txt").write_text(held + "\n")
        row = {"name": held, "predicted": {}}
        for label, method, fields in (("da-only", "da-only", {}), ("sparse-tuning@0.7", "sparse-tuning",
                                                                   {"keep_rate": 0.7})):
            run = root / "runs" / label
            if not (run / "results.json").is_file():
                shutil.rmtree(run, ignore_errors=True)
                cfg = resolve_config({"model": "vit_small_patch14_dinov2", "weights": args.weights, "img_size": 224,
                                      "data": f"seg:{root}", "method": method, "sparse_tuning": fields,
                                      "train": {"epochs": 40, "batch_size": 2, "num_workers": 0, "eval_every": 40,
                                                "log_every": 1000}})
                train_run(cfg, run, log=lambda line: None)
            out = predict_run(run, [str(root / "JPEGImages" / f"{held}.jpg")], masks=run / "masks")
            row["predicted"][label] = np.array(Image.open(out[0]["mask"]))
        row["image"] = np.asarray(Image.open(root / "JPEGImages" / f"{held}.jpg").convert("RGB"))
        row["truth"] = np.array(Image.open(root / "SegmentationClass" / f"{held}.png"))
        rows.append(row)
    fig, axes = plt.subplots(len(rows), 4, figsize=(11, 2.6 * len(rows)))
    for r, row in enumerate(rows):
        panels = [row["image"], colour(row["truth"]), colour(row["predicted"]["da-only"]),
                  colour(row["predicted"]["sparse-tuning@0.7"])]
        for c, panel in enumerate(panels):
            axes[r, c].imshow(panel)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(["VOC 2011 photo", "VOC truth (pale: ignored)", "Dense Adapters alone",
                                      "Sparse-Tuning, keep rate 0.7"][c], fontsize=9)
        axes[r, 0].set_ylabel(row["name"], fontsize=8)
    from sparse_tuning.data.segmentation import VOC_CLASSES

    present = sorted({int(v) for row in rows for m in [row["truth"], *row["predicted"].values()]
                      for v in np.unique(m) if v != 255})
    legend(fig, VOC_CLASSES, present)
    fig.suptitle("labelme's three VOC photos, each predicted by runs trained on the other two (a picture, "
                 "not a benchmark)", fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(args.out / "voc_photos.png", dpi=100)
    plt.close(fig)
