"""Token reduction as its own axis on the real backbone: the paper's class-attention rule, ToMe
and a random control, under Dense Adapters, LoRA, AdaptFormer, sequential adapters and VPT-deep,
at matched cost.

    python benchmarks/real/reduction.py --weights dinov2_vits14.safetensors \
        --data fashionmnist:/usr/share/datasets/fashion-mnist --runs /tmp/reduction-runs \
        --out benchmarks/real/reduction

The protocol is compare.py's (DINOv2 ViT-S/14 at 112 px, 65 tokens; 1000 training and 2000 test
images of Fashion-MNIST, class-balanced per seed; 4 epochs; the same learning rates, 1e-3 for
every adapter, prompt and LoRA method; seeds 0-2).
Runs whose config equals one of compare.py's (Sparse-Tuning at keep rate 0.7, LoRA and
AdaptFormer on every token) are taken from its committed results.json, after seed 0 of
Sparse-Tuning is trained again here and must reproduce its figure.

Phases (each skips work already on disk): train, reproduce (seed 0 of the REPRODUCE configurations
trained again into a fresh folder, which must give the same top-1: runs kept on disk from an
earlier version of the code still stand), time (GFLOPs and inference throughput of every
configuration, interleaved rounds on random inputs), report (results.json, results.md, the plot).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402  (the protocol, shared)

# name -> (method, reduction fields, the compare.py method whose runs it equals, or None)
CONFIGS: dict[str, tuple[str, dict[str, Any], str | None]] = {
    "Sparse-Tuning (class-attention, keep 0.7)": ("sparse-tuning", {"keep_rate": 0.7}, "sparse-tuning"),
    "Sparse-Tuning (class-attention, keep 0.5)": ("sparse-tuning", {"keep_rate": 0.5}, None),
    "Dense Adapters + random (keep 0.7)": ("sparse-tuning", {"reduction": "random", "keep_rate": 0.7}, None),
    "Dense Adapters + ToMe (r 2)": ("sparse-tuning", {"reduction": "tome", "tome_r": [2]}, None),
    "Dense Adapters + ToMe (r 4)": ("sparse-tuning", {"reduction": "tome", "tome_r": [4]}, None),
    "LoRA": ("lora", {}, "lora"),
    "LoRA + class-attention (keep 0.7)": ("lora", {"reduction": "class-attention", "keep_rate": 0.7}, None),
    "AdaptFormer": ("adaptformer", {}, "adaptformer"),
    "AdaptFormer + class-attention (keep 0.7)": ("adaptformer", {"reduction": "class-attention", "keep_rate": 0.7},
                                                 None),
    "Adapter": ("adapter", {}, None),
    "Adapter + class-attention (keep 0.7)": ("adapter", {"reduction": "class-attention", "keep_rate": 0.7}, None),
    "VPT": ("vpt", {}, None),
    "VPT + class-attention (keep 0.7)": ("vpt", {"reduction": "class-attention", "keep_rate": 0.7}, None),
}
FAMILY = {"sparse-tuning": "Dense Adapters", "lora": "LoRA", "adaptformer": "AdaptFormer",
          "adapter": "Adapter (Houlsby)", "vpt": "VPT-deep"}
# Each family's reference: the method on every token (Sparse-Tuning's: the paper's keep 0.7).
REFERENCE = {"lora": "LoRA", "adaptformer": "AdaptFormer", "adapter": "Adapter", "vpt": "VPT",
             "sparse-tuning": "Sparse-Tuning (class-attention, keep 0.7)"}


# Trained again by the reproduce phase (configurations added later sit beside runs trained earlier).
REPRODUCE = ("Dense Adapters + ToMe (r 4)",)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def compare_results(args) -> dict[str, Any]:
    """compare.py's top-1 of each method by seed: {method: {seed: top1}}."""
    results = json.loads((Path(args.compare) / "results.json").read_text())
    seeds = results["meta"]["seeds"]
    return {m: dict(zip(seeds, r["top1"])) for m, r in results["methods"].items()}


def phase_train(args) -> None:
    from sparse_tuning.training.run import train_run

    reused = compare_results(args)
    for seed in args.seeds:
        for name, (method, fields, same_as) in CONFIGS.items():
            if same_as and not (same_as == "sparse-tuning" and seed == 0):
                continue  # compare.py's run, reproduced through seed 0 of Sparse-Tuning
            run = Path(args.runs) / f"{slug(name)}-seed{seed}"
            if (run / "results.json").is_file():
                continue
            print(f"[train] {name} seed {seed} -> {run}", flush=True)
            train_run(compare.run_config(args, method, seed, fields), run)
            if same_as:
                got = json.loads((run / "results.json").read_text())["final"]["top1"]
                want = reused[same_as][seed]
                if abs(got - want) > 1e-9:
                    raise SystemExit(f"{name} seed {seed}: {got} here, {want} in compare.py's results; "
                                     "the protocol no longer reproduces, so its runs cannot be reused")


def phase_reproduce(args) -> None:
    from sparse_tuning.training.run import train_run

    out = Path(args.runs) / "reproduce.json"
    if out.is_file():
        return
    checks = []
    for name in REPRODUCE:
        method, fields, _ = CONFIGS[name]
        again = Path(args.runs) / "reproduce" / f"{slug(name)}-seed0"
        if not (again / "results.json").is_file():
            print(f"[reproduce] {name} seed 0 -> {again}", flush=True)
            train_run(compare.run_config(args, method, 0, fields), again)
        got = json.loads((again / "results.json").read_text())["final"]["top1"]
        want = json.loads((Path(args.runs) / f"{slug(name)}-seed0" / "results.json").read_text())["final"]["top1"]
        if abs(got - want) > 1e-9:
            raise SystemExit(f"{name} seed 0: {got} trained again, {want} on disk; the runs on disk no longer "
                             "reproduce, so train them again (a fresh --runs folder)")
        checks.append({"configuration": name, "seed": 0, "top1": got})
    out.write_text(json.dumps(checks, indent=1) + "\n")


def build(args, method: str, fields: dict[str, Any]):
    from sparse_tuning.training.run import build_model

    cfg = compare.run_config(args, method, 0, fields)
    cfg.pretrained, cfg.weights = False, None  # costs only: random weights of the same shapes
    return build_model(cfg, 10).eval()


def phase_time(args) -> None:
    import torch

    from sparse_tuning.tools.flops import flop_report
    from sparse_tuning.tools.timing import interleaved_medians

    out = Path(args.runs) / "timing.json"
    if out.is_file():
        return
    print("[time] interleaved rounds", flush=True)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    models = {name: build(args, method, fields) for name, (method, fields, _) in CONFIGS.items()}
    rows = {}
    for name, model in models.items():
        report = flop_report(model, (3, args.img_size, args.img_size))
        every = 1 + (args.img_size // 14) ** 2  # no reduction: every token to the end
        # tokens after the last block, VPT's prompts not counted (they are taken out before the head)
        st = getattr(model, "sparse_tuning", None)
        rows[name] = {"gflops": report.gflops, "tokens_after": st.last_tokens[-1][1] - st.num_prompts
                      if st is not None and st.last_tokens else every}
    with torch.no_grad():
        seconds = interleaved_medians({n: (lambda m=m: m(x)) for n, m in models.items()}, rounds=args.rounds, warmup=2)
    for name in rows:
        rows[name]["infer_img_s"] = args.batch_size / seconds[name]
        rows[name]["params_trainable"] = sum(p.numel() for p in models[name].parameters() if p.requires_grad)
    out.write_text(json.dumps(rows, indent=1) + "\n")


def phase_report(args, argv: list[str]) -> None:
    timing = json.loads((Path(args.runs) / "timing.json").read_text())
    checks = Path(args.runs) / "reproduce.json"  # absent when the reproduce phase was not run
    reproduced = json.loads(checks.read_text()) if checks.is_file() else []
    reused = compare_results(args)
    configs: dict[str, Any] = {}
    for name, (method, fields, same_as) in CONFIGS.items():
        if same_as:
            top1, source = [reused[same_as][s] for s in args.seeds], "compare.py"
        else:
            top1 = [json.loads((Path(args.runs) / f"{slug(name)}-seed{s}" / "results.json").read_text())["final"]["top1"]
                    for s in args.seeds]
            source = "here"
        mean, std = compare.mean_std(top1)
        configs[name] = {"method": method, "fields": fields, "top1": top1, "top1_mean": mean, "top1_std": std,
                         "runs": source, **timing[name]}
    for name, r in configs.items():  # each family against its own model on every token (or keep 0.7)
        base = REFERENCE[r["method"]]
        if name != base:
            r["vs"] = {"against": base, **compare.paired_verdict(r["top1"], configs[base]["top1"])}
    meta = compare.protocol_meta(args, "reduction.py", argv, reproduced=reproduced,
                                 timing=f"{args.rounds} interleaved rounds, medians, batch {args.batch_size}, "
                                        "fp32, CPU, inference")
    results = {"configs": configs, "meta": meta}
    compare.write_results(args.out, results, markdown(results), {"reduction.png": plot})


def markdown(results: dict[str, Any]) -> str:
    meta, n = results["meta"], len(results["meta"]["seeds"])
    lines = [f"# Token reduction rules on {meta['model']} (real DINOv2 weights), Fashion-MNIST subsets", "",
             f"`{meta['command']}`", "",
             f"{meta['date']}, {meta['machine']}, torch {meta['torch']}, timm {meta['timm']}. "
             f"{meta['img_size']}x{meta['img_size']} input (65 tokens), {meta['train_samples']} training and "
             f"{meta['eval_samples']} test images drawn per seed, {meta['epochs']} epochs, batch {meta['batch_size']}, "
             f"seeds {meta['seeds']}. Throughput: {meta['timing']}.", "",
             *(["Trained again into a fresh folder, with the same top-1 as the run used here: " + "; ".join(
                 f"{c['configuration']} seed {c['seed']} ({c['top1']:.2f})" for c in meta["reproduced"]) + ".", ""]
               if meta["reproduced"] else []),
             "The last column: the difference to the family's reference (Sparse-Tuning at keep 0.7; the other "
             "methods on every token), paired by seed, mean ± sd, and a paired t-test at 95% (*tie*: inside "
             "the seed noise).", "",
             f"| configuration | top-1 (mean ± sd, {n} seeds) | per seed | GFLOPs | tokens after the last block | "
             "inference img/s | trainable params | runs | vs reference |",
             "|---|---:|---|---:|---:|---:|---:|---|---|"]
    for name, r in results["configs"].items():
        vs = r.get("vs")
        verdict = f"{vs['mean_difference']:+.2f} ± {vs['sd']:.2f}: {vs['verdict']}" if vs else "—"
        lines.append(f"| {name} | {r['top1_mean']:.1f} ± {r['top1_std']:.1f} | "
                     f"{', '.join(f'{v:.2f}' for v in r['top1'])} | {r['gflops']:.3f} | {r['tokens_after']} | "
                     f"{r['infer_img_s']:.0f} | {r['params_trainable']:,} | {r['runs']} | {verdict} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"Dense Adapters": "C0", "LoRA": "C1", "AdaptFormer": "C2", "Adapter (Houlsby)": "C3", "VPT-deep": "C4"}
    markers = {"class-attention": "o", "tome": "^", "random": "x", "none": "s"}
    fig, axes = plt.subplots(1, 2, figsize=(12, 6.2), sharey=True)
    curves: dict[tuple[str, str], list[dict[str, Any]]] = {}  # one curve per adapter and rule
    for name, r in results["configs"].items():
        rule = r["fields"].get("reduction", "class-attention" if r["method"] == "sparse-tuning" else "none")
        curves.setdefault((FAMILY[r["method"]], rule), []).append(r)
    for ax, key, label in ((axes[0], "gflops", "GFLOPs per image (112x112 input)"),
                           (axes[1], "infer_img_s", "inference throughput (images/s, 2 CPU threads, batch 32)")):
        for (family, rule), points in curves.items():
            points = sorted(points, key=lambda p: p["gflops"])
            ax.errorbar([p[key] for p in points], [p["top1_mean"] for p in points],
                        yerr=[p["top1_std"] for p in points], fmt=markers[rule] + "-", capsize=4, markersize=8,
                        color=colors[family], label=f"{family} + {rule}" if ax is axes[0] else None)
        for name, r in results["configs"].items():  # the rate of each point
            tag = ("keep " + str(r["fields"]["keep_rate"]) if "keep_rate" in r["fields"] else
                   "r " + str(r["fields"]["tome_r"][0]) if "tome_r" in r["fields"] else "")
            if tag:
                ax.annotate(tag, (r[key], r["top1_mean"]), textcoords="offset points", xytext=(6, -12), fontsize=7)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 accuracy (%, mean ± sd over seeds)")
    meta = results["meta"]
    fig.suptitle(f"Token reduction rules under five methods: DINOv2 ViT-S/14, Fashion-MNIST "
                 f"({meta['train_samples']} training images, {len(meta['seeds'])} seeds). Colour: method; "
                 "marker: o class-attention, ^ ToMe, x random, s none", fontsize=9)
    fig.legend(loc="lower center", ncol=4, fontsize=8, title="method + token reduction (points: mean ± sd)",
               title_fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    compare.protocol_arguments(p, out=Path(__file__).resolve().parent / "reduction")
    p.add_argument("--compare", default=str(Path(__file__).resolve().parent), help="compare.py's results folder")
    p.add_argument("--phases", default="train,reproduce,time,report")
    args = p.parse_args(argv)
    return compare.run_phases(args, argv, {"train": lambda a, _: phase_train(a), "reproduce": lambda a, _: phase_reproduce(a),
                                           "time": lambda a, _: phase_time(a),
                                           "report": phase_report})


if __name__ == "__main__":
    sys.exit(main())
