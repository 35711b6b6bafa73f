"""Deployment speed and accuracy per engine, on two CPU cores: PyTorch eager, torch.compile, ONNX
Runtime fp32 and ONNX Runtime int8, at batch 1, 8 and 32; one command.

    python benchmarks/deploy/deploy.py --weights dinov2_vits14.safetensors --data /tmp/suite-data/fashion-mnist

Phases (--phases; each writes its own folder and skips what exists):
  vit-b    ViT-B/16 at 224 (random weights: speed does not depend on the values): the plain model,
           Sparse-Tuning and LoRA + class-attention on every engine (sparse-tuning bench --engine),
           into vit_b16/ (bench.json, bench.md, bench.png)
  dinov2   the same on the real DINOv2 ViT-S/14 at 224, into dinov2_s14/
  accuracy a Sparse-Tuning run of DINOv2 ViT-S/14 at 224 on the suite's Fashion-MNIST task (1,000
           training images, 4 epochs, seed 0), exported fp32, int8 (dynamic) and int8-static; the
           top-1 of each file in ONNX Runtime and of the run in PyTorch on the 2,000 held-out
           images, into accuracy.json / accuracy.md
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENGINES = "torch,compiled,onnxruntime,onnxruntime-int8"
METHODS = "sparse-tuning,lora+class-attention"


ROOT = HERE.parents[1]


def cli(*argv: str) -> str:
    """sparse-tuning ARGV from the repository root (a recorded command then names its files relative to it)."""
    proc = subprocess.run([sys.executable, "-m", "sparse_tuning", *argv], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"sparse-tuning {' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def bench(args: argparse.Namespace, model: str, out: Path, *extra: str) -> None:
    if (out / "bench.json").is_file():
        return
    cli("bench", "--model", model, "--img-size", "224", "--methods", METHODS, "--engine", ENGINES,
        "--batch-size", "1,8,32", "--threads", str(args.threads), "--rounds", str(args.rounds), "--keep-rate", "0.7",
        "--out", str(out.relative_to(ROOT)), *extra)


def accuracy(args: argparse.Namespace) -> None:
    out = HERE / "accuracy.json"
    if out.is_file():
        return
    run = args.runs / "st-fashion-224"
    if not (run / "results.json").is_file():
        cli("train", "--model", "vit_small_patch14_dinov2", "--weights", args.weights, "--img-size", "224",
            "--data", f"folder:{args.data}", "--method", "sparse-tuning", "--epochs", "4", "--seed", "0",
            "--augment", "none", "--num-workers", "0", "--out", str(run))
    rows = {"pytorch fp32 (the run)": json.loads((run / "results.json").read_text())["final"]["top1"]}
    for name, quantize in (("onnxruntime fp32", None), ("onnxruntime int8 (dynamic)", "int8"),
                           ("onnxruntime int8-static", "int8-static")):
        path = args.runs / f"st-fashion-224-{quantize or 'fp32'}.onnx"
        cli("export", "--run", str(run), "--format", "onnx", "--out", str(path), "--check-samples", "0",
            *(("--quantize", quantize) if quantize else ()))
        printed = cli("eval", "--model-file", str(path), "--data", f"folder:{args.data}", "--threads", str(args.threads))
        rows[name] = float(printed.split("top-1 ")[1].split()[0])
    out.write_text(json.dumps({"run": run.name, "top1": rows, "test_images": 2000,
                               "note": "pytorch fp32 is the run's own final evaluation (results.json), on the device "
                                       "it trained on; the ONNX rows are evaluated here, on the CPU"}, indent=1) + "\n")
    lines = ["| engine | top-1 (%) | vs the run |", "|---|---:|---:|"]
    base = rows["pytorch fp32 (the run)"]
    lines += [f"| {k} | {v:.2f} | {v - base:+.2f} |" for k, v in rows.items()]
    (HERE / "accuracy.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True, help="DINOv2 ViT-S/14 (benchmarks/real/backbone.py --out)")
    p.add_argument("--data", required=True, type=Path, help="the suite's fashion-mnist task (benchmarks/suite/tasks.py)")
    p.add_argument("--runs", type=Path, default=Path("/tmp/deploy-runs"), help="scratch folder")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--phases", type=lambda s: s.split(","), default=["vit-b", "dinov2", "accuracy"])
    args = p.parse_args()
    # the commands run from the repository root: the user's paths, made absolute
    args.weights, args.data, args.runs = str(Path(args.weights).resolve()), args.data.resolve(), args.runs.resolve()
    if "vit-b" in args.phases:
        bench(args, "vit_base_patch16_224", HERE / "vit_b16")
    if "dinov2" in args.phases:
        bench(args, "vit_small_patch14_dinov2", HERE / "dinov2_s14", "--weights", args.weights)
    if "accuracy" in args.phases:
        accuracy(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
