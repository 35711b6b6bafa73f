"""The README's quick start is what CI runs, and its figures come from committed benchmark files."""
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_quick_start_has_two_commands_and_ci_runs_the_test_one():
    main_job, tests = quick_start_commands()
    assert "sparse-tuning" in main_job and "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci


def test_readme_flops_figures_are_in_the_benchmark_file():
    rows = json.loads((ROOT / "benchmarks" / "flops.json").read_text())["rows"]
    vit_b = {r["label"]: r for r in rows if r["model"] == "vit_base_patch16_224"}
    readme = (ROOT / "README.md").read_text()
    for label, figure in [("dense (plain timm)", "17.58"), ("da-only, b=32", "17.80"),
                          ("sparse-tuning, b=32", "11.75"), ("sparse-tuning, b=8 (VTAB-1K)", "11.66"),
                          ("ts-only", "11.62")]:
        assert f"{vit_b[label]['gflops']:.2f}" == figure and f"| {figure} |" in readme
    st = vit_b["sparse-tuning, b=32"]
    assert f"{100 * st['gflops'] / st['dense_gflops']:.1f}%" in readme


def test_readme_comparison_figures_are_in_the_benchmark_file():
    rows = {r["method"]: r for r in json.loads((ROOT / "benchmarks" / "bench_vit_b_cpu" / "bench.json").read_text())["rows"]}
    st = rows["sparse-tuning"]
    readme = (ROOT / "README.md").read_text()
    for method, label in [("full", "full fine-tuning (plain timm ViT-B)"), ("adaptformer", "AdaptFormer"),
                          ("sparse-tuning (eager)", "Sparse-Tuning with eager attention")]:
        r = rows[method]
        line = (f"| {label} | {r['train_step_s'] / st['train_step_s']:.2f}x as long | "
                f"{r['train_memory_mb'] / st['train_memory_mb']:.2f}x | "
                f"{st['infer_images_per_s'] / r['infer_images_per_s']:.2f}x as high |")
        assert line in readme, line
    full, af = rows["full"], rows["adaptformer"]
    assert (f"Sparse-Tuning infers at {st['infer_images_per_s'] / full['infer_images_per_s']:.2f}x the plain ViT-B's\n"
            f"throughput and trains {af['train_step_s'] / st['train_step_s']:.2f}x faster than AdaptFormer in "
            f"{st['train_memory_mb'] / af['train_memory_mb']:.2f}x its memory") in readme


def test_readme_demo_figures_are_in_the_committed_report():
    data = json.loads((ROOT / "benchmarks" / "demo" / "report.json").read_text())
    rows = {r["method"]: r for r in data["rows"]}
    readme = (ROOT / "README.md").read_text()
    st, af = rows["sparse-tuning"], rows["adaptformer"]
    assert f"Sparse-Tuning reaches {st['top1']:.2f}% top-1 at {1000 * st['gflops']:.1f} MFLOPs" in readme
    assert f"AdaptFormer\n{af['top1']:.2f}% at {1000 * af['gflops']:.1f}" in readme
    model, rand = data["recall"]["model"], data["recall"]["random"]
    assert f"holds {model[0]:.2f}, {model[1]:.2f} and {model[2]:.2f} of the foreground" in readme
    assert f"would hold {rand[0]:.2f}, {rand[1]:.2f} and {rand[2]:.2f}" in readme


def test_readme_video_figures_are_in_the_benchmark_file():
    rows = {(r["video_tokens"], r["method"]): r["gflops"]
            for r in json.loads((ROOT / "benchmarks" / "flops_video.json").read_text())["rows"]}
    readme = (ROOT / "README.md").read_text()
    jd, js = rows[("joint", "dense")], rows[("joint", "sparse-tuning")]
    assert f"joint layout {jd:.2f} GFLOPs dense,\n{js:.2f} with Sparse-Tuning ({100 * (1 - js / jd):.0f}% fewer" in readme
    assert f"frames layout {rows[('frames', 'dense')]:.2f} and {rows[('frames', 'sparse-tuning')]:.2f}" in readme
