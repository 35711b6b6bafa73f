"""Hub-style folders (tools/pretrained.py): export --format pretrained writes config.json,
model.safetensors (only what trained) and a model card; from_pretrained rebuilds the same model
on the same backbone and refuses another; push_to_hub calls the Hub's upload API (mocked: tests
never touch the network)."""
import json

import pytest
import torch
import yaml
from data_files import train_micro_run
from safetensors import safe_open

from sparse_tuning.cli import main
from sparse_tuning.tools import pretrained
from sparse_tuning.training.run import load_run

MODEL = "st_vit_micro_patch4_32"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_micro_run(tmp_path_factory.mktemp("pretrained"), "--keep-rate", "0.5")[0]


def test_the_folder_holds_what_trained_a_fingerprint_and_a_card(run, tmp_path):
    out = tmp_path / "shared"
    assert main(["export", "--run", str(run), "--format", "pretrained", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    model, cfg = load_run(run)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert len(names) == sum(1 for p in model.parameters() if p.requires_grad)  # nothing frozen in it
    config = json.loads((out / "config.json").read_text())
    assert config["backbone"] == {"name": MODEL, "fingerprint": pretrained.backbone_fingerprint(model)}
    assert "weights" not in config["run_config"] and config["run_config"]["classes"] == cfg.classes
    assert str(run.parent) not in (out / "config.json").read_text()  # no local path is shared
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    top1 = json.loads((run / "results.json").read_text())["final"]["top1"]
    assert front["library_name"] == "sparse-tuning" and front["base_model"] == MODEL
    assert front["model-index"][0]["results"][0]["metrics"][0] == {"type": "top1", "value": round(top1, 2)}
    assert "GFLOPs per image" in card and "class-attention, keep rate 0.5" in card


def test_from_pretrained_gives_the_runs_logits(run, tmp_path):
    out = pretrained.save_pretrained(run, tmp_path / "shared")
    loaded = pretrained.from_pretrained(out)
    model, _ = load_run(run)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.run_config.method == "sparse-tuning"


def test_another_backbone_is_refused_in_one_line(run, tmp_path, capsys):
    import timm
    from safetensors.torch import save_file

    out = pretrained.save_pretrained(run, tmp_path / "shared")
    torch.manual_seed(123)
    other = tmp_path / "other.safetensors"
    save_file(timm.create_model(MODEL, num_classes=3).state_dict(), str(other))
    with pytest.raises(ValueError, match="is not the one .* was trained on"):
        pretrained.from_pretrained(out, backbone=str(other))


def test_a_repository_that_cannot_be_fetched_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="neither a model folder nor a Hub repository"):
        pretrained.from_pretrained("someone/not-here")


def test_push_to_hub_uploads_the_folder(run, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id)))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder",
                        lambda self, folder_path, repo_id, **kw: calls.append(("upload", folder_path, repo_id)))
    out = tmp_path / "shared"
    assert main(["export", "--run", str(run), "--format", "pretrained", "--out", str(out),
                 "--push-to-hub", "me/micro"]) == 0
    assert calls == [("create", "me/micro"), ("upload", str(out), "me/micro")]
    assert "uploaded to https://huggingface.co/me/micro" in capsys.readouterr().out


def test_mistakes_are_one_line(run, tmp_path, capsys):
    assert main(["export", "--run", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
                 "--push-to-hub", "me/x"]) == 2
    assert "--push-to-hub uploads a --format pretrained folder" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert main(["export", "--run", str(run), "--format", "pretrained", "--out", str(tmp_path / "full")]) == 2
    assert "is not empty" in capsys.readouterr().err
