"""The README's quick start is what CI runs, and its figures come from committed benchmark files."""
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def flat(text: str) -> str:
    """Whitespace folded, so that a figure may sit across a line break of the README."""
    return " ".join(text.split())


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
    readme = flat((ROOT / "README.md").read_text())
    for label, figure in [("dense (plain timm)", "17.58"), ("da-only, b=32", "17.80"),
                          ("sparse-tuning, b=32", "11.75"), ("sparse-tuning, b=8 (VTAB-1K)", "11.66"),
                          ("ts-only", "11.62")]:
        assert f"{vit_b[label]['gflops']:.2f}" == figure and f"| {figure} |" in readme
    st = vit_b["sparse-tuning, b=32"]
    assert f"{100 * st['gflops'] / st['dense_gflops']:.1f}%" in readme


def test_readme_comparison_figures_are_in_the_benchmark_file():
    rows = {r["method"]: r for r in json.loads((ROOT / "benchmarks" / "bench_vit_b_cpu" / "bench.json").read_text())["rows"]}
    st = rows["sparse-tuning"]
    readme = flat((ROOT / "README.md").read_text())
    for method, label in [("full", "full fine-tuning (plain timm ViT-B)"), ("adaptformer", "AdaptFormer"),
                          ("sparse-tuning (eager)", "Sparse-Tuning with eager attention")]:
        r = rows[method]
        line = (f"| {label} | {r['train_step_s'] / st['train_step_s']:.2f}x as long | "
                f"{r['train_memory_mb'] / st['train_memory_mb']:.2f}x | "
                f"{st['infer_images_per_s'] / r['infer_images_per_s']:.2f}x as high |")
        assert flat(line) in readme, line
    full, af = rows["full"], rows["adaptformer"]
    assert (f"Sparse-Tuning infers at {st['infer_images_per_s'] / full['infer_images_per_s']:.2f}x the plain ViT-B's "
            f"throughput and trains {af['train_step_s'] / st['train_step_s']:.2f}x faster than AdaptFormer in "
            f"{st['train_memory_mb'] / af['train_memory_mb']:.2f}x its memory") in readme


def test_readme_demo_figures_are_in_the_committed_report():
    data = json.loads((ROOT / "benchmarks" / "demo" / "report.json").read_text())
    rows = {r["method"]: r for r in data["rows"]}
    readme = flat((ROOT / "README.md").read_text())
    st, af = rows["sparse-tuning"], rows["adaptformer"]
    for r in (st, af):
        low, high = r["top1_ci95"]
        assert f"{r['top1']:.1f}% (95% interval {low:.1f}-{high:.1f})" in readme
    assert f"{1000 * st['gflops']:.1f} MFLOPs" in readme and f"{1000 * af['gflops']:.1f}" in readme
    model, rand = data["recall"]["model"], data["recall"]["random"]
    assert f"holds {model[0]:.2f}, {model[1]:.2f} and {model[2]:.2f} of the foreground" in readme
    assert f"would hold {rand[0]:.2f}, {rand[1]:.2f} and {rand[2]:.2f}" in readme


def test_readme_real_backbone_figures_are_in_the_committed_results():
    real = ROOT / "benchmarks" / "real"
    results = json.loads((real / "results.json").read_text())
    readme = flat((ROOT / "README.md").read_text())
    first_image = re.search(r"!\[[^\]]*\]\(([^)]+)\)", readme).group(1)
    assert first_image == "benchmarks/real/kept_tokens_photos.png"
    for method, r in results["methods"].items():
        assert len(r["top1"]) >= 3
        assert f"| {method} | {r['top1_mean']:.1f} ± {r['top1_std']:.1f} | {r['gflops']:.2f} |" in readme, method
    m = results["methods"]
    full_token_gflops = min(r["gflops"] for k, r in m.items() if k not in ("sparse-tuning", "ts-only"))
    assert f"Sparse-Tuning costs {100 * m['sparse-tuning']['gflops'] / full_token_gflops:.0f}% of the FLOPs" in readme
    lora = m["lora"]["vs_sparse_tuning"]
    assert f"(by {lora['mean_difference']:.1f} points on average)" in readme
    kept = json.loads((real / "kept_tokens.json").read_text())["recall"]
    figures = ", ".join(f"{v:.2f}" for v in kept["per_photo_mean"])
    assert f"({figures})" in readme
    assert f"({', '.join(f'{v:.2f}' for v in kept['random'])})" in readme
    check = json.loads((real / "backbone_check.json").read_text())["check"]
    assert f"{check['max_abs_diff']:.0e}" in readme


def test_readme_video_figures_are_in_the_benchmark_file():
    rows = {(r["video_tokens"], r["method"]): r["gflops"]
            for r in json.loads((ROOT / "benchmarks" / "flops_video.json").read_text())["rows"]}
    readme = flat((ROOT / "README.md").read_text())
    jd, js = rows[("joint", "dense")], rows[("joint", "sparse-tuning")]
    assert f"joint layout {jd:.2f} GFLOPs dense, {js:.2f} with Sparse-Tuning ({100 * (1 - js / jd):.0f}% fewer" in readme
    assert f"frames layout {rows[('frames', 'dense')]:.2f} and {rows[('frames', 'sparse-tuning')]:.2f}" in readme


def test_the_reduction_table_is_the_committed_results():
    """The rules' table, in benchmarks/real/README.md (the main README links it)."""
    results = json.loads((ROOT / "benchmarks" / "real" / "reduction" / "results.json").read_text())["configs"]
    readme = flat((ROOT / "benchmarks" / "real" / "README.md").read_text())
    for name, r in results.items():
        row = (f"| {name} | {r['top1_mean']:.1f} ± {r['top1_std']:.1f} | {r['gflops']:.2f} | {r['tokens_after']} | "
               f"{r['infer_img_s']:.0f} |")
        assert row in readme, row
        if "vs" in r:
            assert f"{r['vs']['mean_difference']:+.1f} ± {r['vs']['sd']:.1f}: {r['vs']['verdict']} |" in readme, name


def test_readme_significance_claims_are_the_benchmark_files_paired_tests():
    """The keep-rate claim (0.6 against 0.7) and the ranking claim (random against class-attention
    at keep 0.7): mean differences and paired-t p-values recomputed from the committed seeds."""
    from scipy import stats

    readme = flat((ROOT / "README.md").read_text())
    sweep = json.loads((ROOT / "benchmarks" / "real" / "results.json").read_text())["keep_rate_sweep"]
    low, ref = sweep["0.6"]["top1"], sweep["0.7"]["top1"]
    diff = sum(a - b for a, b in zip(low, ref)) / len(ref)
    assert all(a < b for a, b in zip(low, ref))
    assert f"{-diff:.1f} points lower at 0.6 in every seed (paired p = {stats.ttest_rel(low, ref).pvalue:.3f})" in readme
    configs = json.loads((ROOT / "benchmarks" / "real" / "reduction" / "results.json").read_text())["configs"]
    rand = configs["Dense Adapters + random (keep 0.7)"]["top1"]
    ca = configs["Sparse-Tuning (class-attention, keep 0.7)"]["top1"]
    diff = sum(a - b for a, b in zip(ca, rand)) / len(ca)
    p = stats.ttest_rel(rand, ca).pvalue
    assert all(a < b for a, b in zip(rand, ca)) and 0.01 < p < 0.05
    rules = flat((ROOT / "benchmarks" / "real" / "README.md").read_text())  # the table and its discussion
    assert f"is {diff:.1f} points lower, in every seed, at paired p = {p:.4f}" in rules
    assert f"is {diff:.1f} points under the most-attended 70% in every seed (p = {p:.4f}" in readme


def test_readme_multitask_figures_are_in_the_benchmark_file():
    r = json.loads((ROOT / "benchmarks" / "multitask" / "results.json").read_text())
    readme = flat((ROOT / "README.md").read_text())
    s, rss, w = r["storage_mb"], r["rss_mb"], r["switch"]
    for figure in (f"{s['shared']:.1f} MB held together against {s['separate']:.1f} MB as separate models "
                   f"({s['one_model']:.1f} MB for one)", f"grows by {rss['shared']:.0f} MB against {rss['separate']:.0f} MB",
                   f"{w['one_task_ms']:.1f} ms when requests go to one task and {w['alternating_ms']:.1f} ms"):
        assert figure in readme, figure


def test_readme_segmentation_figures_are_in_the_benchmark_file():
    import statistics

    r = json.loads((ROOT / "benchmarks" / "segment" / "results.json").read_text())
    readme = flat((ROOT / "README.md").read_text())
    c, b = r["configs"], r["boundary"]["configs"]
    for name in ("da-only", "lora", "linear", "sparse-tuning@0.9", "sparse-tuning@0.7", "lora+class-attention@0.7",
                 "sparse-tuning@0.7+head-blocks-2-11"):
        assert f"{statistics.mean(c[name]['miou']):.1f} ± {statistics.stdev(c[name]['miou']):.1f}" in readme, name
    assert f"{c['sparse-tuning@0.7']['infer_images_per_s']:.1f} img/s" in readme
    assert f"{b['da-only']['boundary']:.1f} with every token, {b['sparse-tuning@0.9']['boundary']:.1f} at 0.9" in readme


def test_readme_deployment_figures_are_in_the_benchmark_file():
    rows = json.loads((ROOT / "benchmarks" / "deploy" / "dinov2_s14" / "bench.json").read_text())["rows"]
    by = {(r["method"], r["engine"], r["batch_size"]): r for r in rows}
    st = lambda engine, batch: by[("sparse-tuning", engine, batch)]
    readme = flat((ROOT / "README.md").read_text())
    for figure in (f"{st('onnxruntime-int8', 32)['throughput_vs_dense_torch']:.2f}x the plain model's fp32 PyTorch",
                   f"{st('onnxruntime-int8', 8)['throughput_vs_dense_torch']:.2f}x at batch 8",
                   f"At batch 1 it runs at {st('onnxruntime-int8', 1)['throughput_vs_dense_torch']:.2f}x",
                   f"{st('onnxruntime', 32)['throughput_vs_dense']:.2f}x (ONNX Runtime fp32)"):
        assert figure in readme, figure


def suite_results():
    return json.loads((ROOT / "benchmarks" / "suite" / "results.json").read_text())


def test_readme_suite_table_is_recomputed_from_the_committed_cells():
    """Each row of the README's suite table: the suite mean (per seed over the tasks, then over
    seeds) recomputed from the cells, and the paired t-test against LoRA recomputed with scipy."""
    import statistics

    from scipy import stats

    cells = ROOT / "benchmarks" / "suite" / "cells"
    results = suite_results()
    tasks = list(results["tasks"])

    def per_seed(name):
        by_task = [{json.loads(p.read_text())["seed"]: json.loads(p.read_text())["top1"]
                    for p in (cells / task / name).glob("seed*.json")} for task in tasks]
        seeds = sorted(set.intersection(*(set(t) for t in by_task)))
        return {s: statistics.mean(t[s] for t in by_task) for s in seeds}

    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Across tasks", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| ([a-z@0-9.+-]+) \| ([\d.]+) ± ([\d.]+) \| (\d+) \| (.+?) \|$", section, re.M)
    assert len(rows) >= 8
    reference = per_seed("lora")
    for name, mean, sd, speed, versus in rows:
        mine = per_seed(name)
        assert f"{statistics.mean(mine.values()):.1f}" == mean and f"{statistics.stdev(mine.values()):.1f}" == sd, name
        assert f"{results['tasks'][tasks[0]]['methods'][name]['infer_images_per_s']['32']:.0f}" == speed, name
        if name == "lora":
            assert versus == "reference"
            continue
        common = [s for s in mine if s in reference]
        diff = [mine[s] - reference[s] for s in common]
        p = stats.ttest_rel([mine[s] for s in common], [reference[s] for s in common]).pvalue
        verdict = ("lower" if statistics.mean(diff) < 0 else "higher") if p < 0.05 else "tie"
        assert versus == f"{statistics.mean(diff):+.2f} ± {statistics.stdev(diff):.2f}: {verdict}", name


def test_readme_suite_claims_are_the_committed_results():
    results = suite_results()
    suite, recovery = results["suite"], results["recovery"]
    readme = flat((ROOT / "README.md").read_text())
    notes = flat((ROOT / "benchmarks" / "suite" / "README.md").read_text())
    teacher = suite["lora+class-attention@0.7+teacher-lora"]["vs_reference"]
    alone = suite["lora+class-attention@0.7"]["vs_reference"]
    assert teacher["verdict"] == "lower" and alone["verdict"] == "tie"
    for text in (readme, notes):
        assert f"{-teacher['mean_difference']:.2f} ± {teacher['sd']:.2f} points below LoRA" in text
        assert f"{-alone['mean_difference']:.2f} ± {alone['sd']:.2f} below" in text
        assert f"at {teacher['throughput_ratio']:.2f}x" in text
    # "No configuration is shown to meet it": for every token-reducing configuration at >= 1.35x
    # LoRA's throughput, the 95% interval of its gap to LoRA reaches beyond 0.3 points
    import math

    from scipy import stats

    for name, s in suite.items():
        vs = s.get("vs_reference")
        if not vs or results["tasks"]["mnist"]["methods"][name]["keeps_every_token"] or vs["throughput_ratio"] < 1.35:
            continue
        n = len(vs["seeds"])
        reach = -vs["mean_difference"] + stats.t.ppf(0.975, n - 1) * vs["sd"] / math.sqrt(n)
        assert reach > 0.3, name
    assert "No configuration is shown to meet it" in readme and "no configuration is shown to meet it" in notes
    for option in ("sparse-tuning+class-attention@0.7+teacher-lora", "lora+class-attention@0.7+teacher-lora",
                   "sparse-tuning+class-attention@0.7+keep-anneal@2", "sparse-tuning+class-attention@0.7+keep-random@0.5"):
        assert recovery[option]["verdict"] == "tie", option  # "no option showed a gain that 3 seeds can detect"
    assert "No recovery option showed a gain that 3 seeds can detect" in readme
    for option in ("sparse-tuning+class-attention@0.7+self-distill", "lora+class-attention@0.7+self-distill",
                   "lora+class-attention@0.7+dense-trained"):
        assert recovery[option]["verdict"] == "lower", option
    assert f"costs {-recovery['lora+class-attention@0.7+dense-trained']['mean_difference']:.1f} points" in readme
    log = (ROOT / "benchmarks" / "suite" / "gpu-run.log").read_text()
    seconds = re.search(r"^suite: (\d+) s$", log, re.M).group(1)
    assert f"{seconds} s on one H200 GPU" in readme and f"the whole suite took {seconds} s" in notes
    runs = sum(1 for _ in (ROOT / "benchmarks" / "suite" / "cells").glob("*/*/*.json"))
    assert f"{runs} runs" in readme and f"The whole suite is {runs} runs" in notes
    defaults = json.loads((ROOT / "benchmarks" / "suite" / "defaults.json").read_text())["runs"]
    gaps = [abs(r["suite_recipe"]["top1_mean"] - r["top1"]) for r in defaults.values() if r.get("suite_recipe")]
    assert len(gaps) == 4 and f"within {max(gaps):.1f} points of the suite's own recipe" in readme


def test_readme_vit_b_and_int8_accuracy_figures_are_in_the_benchmark_files():
    rows = json.loads((ROOT / "benchmarks" / "deploy" / "vit_b16" / "bench.json").read_text())["rows"]
    by = {(r["method"], r["engine"], r["batch_size"]): r for r in rows}
    st = lambda engine, batch: by[("sparse-tuning", engine, batch)]
    readme = flat((ROOT / "README.md").read_text())
    flop_ratio = by[("dense", "torch", 1)]["gflops"] / st("torch", 1)["gflops"]
    latency = {e: by[("dense", e, 1)]["latency_p50_ms"] / st(e, 1)["latency_p50_ms"]
               for e in ("torch", "compiled", "onnxruntime", "onnxruntime-int8")}
    within = {e for e, r in latency.items() if abs(r / flop_ratio - 1) <= 0.10}
    assert within == {"compiled", "onnxruntime"}  # what the README says is and is not within 10%
    for figure in (f"{st('onnxruntime-int8', 1)['throughput_vs_dense_torch']:.2f}x the plain fp32 PyTorch model at batch 1",
                   f"{st('onnxruntime-int8', 32)['throughput_vs_dense_torch']:.2f}x at batch 32",
                   f"{latency['compiled']:.2f}x compiled and {latency['onnxruntime']:.2f}x in fp32 ONNX Runtime",
                   f"the {flop_ratio:.2f}x GFLOPs ratio",
                   f"{latency['torch']:.2f}x in eager PyTorch and {latency['onnxruntime-int8']:.2f}x in int8"):
        assert figure in readme, figure
    top1 = json.loads((ROOT / "benchmarks" / "deploy" / "accuracy.json").read_text())["top1"]
    run = top1["pytorch fp32 (the run)"]
    dynamic, static = top1["onnxruntime int8 (dynamic)"], top1["onnxruntime int8-static"]
    assert f"fp32 ONNX Runtime {top1['onnxruntime fp32']:.2f}% against the run's {run:.2f}%" in readme
    assert f"dynamic int8 {dynamic:.2f}% ({dynamic - run:+.2f} points), static int8 {static:.2f}% " \
           f"({static - run:+.2f})" in readme
    assert run - dynamic <= 0.5 < run - static  # why dynamic is what --quantize int8 means


def test_deploy_notes_figures_are_in_the_benchmark_files():
    """benchmarks/deploy/README.md: each goal's figures from the bench and accuracy files."""
    notes = flat((ROOT / "benchmarks" / "deploy" / "README.md").read_text())

    def rows(folder):
        rows = json.loads((ROOT / "benchmarks" / "deploy" / folder / "bench.json").read_text())["rows"]
        return {(r["method"], r["engine"], r["batch_size"]): r for r in rows}

    b, d = rows("vit_b16"), rows("dinov2_s14")
    x = lambda by, batch: by[("sparse-tuning", "onnxruntime-int8", batch)]["throughput_vs_dense_torch"]
    assert f"({x(b, 1):.2f}x at batch 1, {x(b, 32):.2f}x at batch 32)" in notes
    assert f"met at batch 32 ({x(d, 32):.2f}x) and batch 8 ({x(d, 8):.2f}x), not at batch 1 ({x(d, 1):.2f}x)" in notes
    ms = lambda engine: d[("sparse-tuning", engine, 1)]["latency_p50_ms"]
    assert f"({ms('onnxruntime-int8'):.1f} against {ms('onnxruntime'):.1f} ms a batch)" in notes
    top1 = json.loads((ROOT / "benchmarks" / "deploy" / "accuracy.json").read_text())["top1"]
    run, ort = top1["pytorch fp32 (the run)"], top1["onnxruntime fp32"]
    dynamic, static = top1["onnxruntime int8 (dynamic)"], top1["onnxruntime int8-static"]
    assert f"{run - dynamic:.2f} points under the fp32 run ({dynamic:.2f}% against {run:.2f}%)" in notes
    assert f"int8-static is {run - static:.2f} under" in notes
    assert f"({ort:.2f}%) the drops are {ort - dynamic:.2f} and {ort - static:.2f} points" in notes
    assert f"the difference is {round((run - dynamic) * 20)} and {round((run - static) * 20)} images of 2,000" in notes
