"""The offline demo, quick: report, recall figures and pictures, from nothing (no cache)."""
import json
import re

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sparse_tuning.cli import main
from sparse_tuning.tools.demo import CACHE_VERSION, CHANCE, METHODS, QUICK, SMOKE, pretrained_backbone


def test_quick_demo(tmp_path, monkeypatch, capsys):
    from sparse_tuning.tools import demo

    monkeypatch.setenv("SPARSE_TUNING_CACHE", str(tmp_path / "cache"))
    titles = {}
    for name in ("keep_rate_plot", "kept_tokens_figure"):  # the pictures' titles, as drawn
        real = getattr(demo, name)
        monkeypatch.setattr(demo, name, lambda *a, _real=real, _name=name, **kw: (
            titles.__setitem__(_name, (a[2] if len(a) > 2 and isinstance(a[2], str) else kw.get("title"), kw)),
            _real(*a, **kw))[1])
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert "pre-training the backbone" in capsys.readouterr().out
    report = (out / "report.md").read_text()
    for method in METHODS:
        assert f"| {method} |" in report
    data = json.loads((out / "report.json").read_text())
    assert [r["method"] for r in data["rows"]] == list(METHODS)
    # Top-1 is a count of the 64 test images; trainable parameters are each method's, by hand
    # (width 64, 5 classes: the head has 64 * 5 + 5 weights; full fine-tuning trains everything).
    assert all((r["top1"] * 64 / 100) == pytest.approx(round(r["top1"] * 64 / 100)) for r in data["rows"])
    by_method = {r["method"]: r for r in data["rows"]}
    assert by_method["linear"]["params_trainable"] == by_method["ts-only"]["params_trainable"] == 64 * 5 + 5
    assert by_method["sparse-tuning"]["params_trainable"] == by_method["da-only"]["params_trainable"] > 325
    recall = data["recall"]
    assert len(recall["model"]) == len(recall["random"]) == 3
    assert all(0 <= v <= 1 for v in recall["model"] + recall["random"])
    assert recall["random"] == sorted(recall["random"], reverse=True)
    assert re.search(r"\| 1 \(block 3\) \| 0\.\d{3} \| 0\.7\d\d \|", report)
    sweep = {r["keep_rate"]: r for r in data["sweep"]}
    assert sweep[0.3]["gflops"] < sweep[0.7]["gflops"] < sweep[1.0]["gflops"]
    with Image.open(out / "kept_tokens.png") as img:  # 6 rows (images), 4 columns (image + 3 steps)
        assert img.height > img.width > 300
    with Image.open(out / "keep_rate.png") as img:
        assert img.size == (720, 480)
    # A smoke test says so, in the report and in both pictures' titles, and times nothing; every
    # accuracy stands next to chance (5 classes), in the table and as a line in the keep-rate plot.
    assert "**This is a smoke test.**" in report
    assert set(titles) == {"keep_rate_plot", "kept_tokens_figure"}, titles  # both pictures drawn and seen
    assert all(title and SMOKE in title for title, _ in titles.values()), titles
    assert titles["keep_rate_plot"][1]["chance"] == CHANCE
    assert all("infer_images_per_s" not in r and "train_memory_mb" not in r for r in data["rows"])
    assert "Memory:" not in report and "inference (img/s)" not in report
    assert data["chance"] == 20.0 and all(f"| {CHANCE:.1f} |" in line for line in report.splitlines()
                                          if line.startswith(tuple(f"| {m} |" for m in METHODS)))
    # Every accuracy with its interval, every comparison with Sparse-Tuning called, no top-5 (5 classes).
    rows = {r["method"]: r for r in data["rows"]}
    for r in rows.values():
        low, high = r["top1_ci95"]
        assert low <= r["top1"] <= high and r["test_images"] == 64
        assert r["vs_sparse_tuning"] in ("tie", "higher", "lower", "—")
    assert rows["full"]["lr"] < rows["linear"]["lr"]
    assert "top-5" not in report
    # A second run reuses the cached backbone: the same tensors, no pre-training.
    lines = []
    cached = pretrained_backbone(QUICK, lines.append)
    assert len(lines) == 1 and lines[0].endswith("(cached)")
    saved = load_file(str(tmp_path / "cache" / CACHE_VERSION / "backbone-quick.safetensors"))
    assert cached.keys() == saved.keys() and all(torch.equal(cached[k], saved[k]) for k in saved)
