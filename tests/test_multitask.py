"""Many tasks on one backbone (tools/multitask.py): each task's outputs are its own run's exactly,
the frozen weights are held once, and runs on another backbone are refused in one line."""
import json

import pytest
import torch
from data_files import make_folder

from sparse_tuning.cli import main
from sparse_tuning.tools.multitask import MultiTask, unique_bytes
from sparse_tuning.training.run import load_run, predict_run

MODEL = "st_vit_micro_patch4_32"


def train(tmp, name, classes, *options, seed="0"):
    data = make_folder(tmp / f"ds-{name}", classes=classes, train=4, val=2)
    run = tmp / name
    assert main(["train", "--model", MODEL, "--no-pretrained", "--data", f"folder:{data}", "--out", str(run),
                 "--epochs", "1", "--batch-size", "4", "--num-workers", "0", "--seed", seed, *options]) == 0
    return run, data


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multi")
    # a random backbone (--no-pretrained) is the same for the same seed and number of classes (timm draws
    # the head before the class token): the stand-in for one pre-trained backbone under several tasks
    return {"st": train(tmp, "st", 3, "--keep-rate", "0.5"), "lora": train(tmp, "lora", 3, "--method", "lora"),
            "vpt": train(tmp, "vpt", 3, "--method", "vpt"), "other": train(tmp, "other", 3, seed="1")}


def test_each_task_is_its_own_run_and_the_backbone_is_held_once(runs):
    multi = MultiTask({k: runs[k][0] for k in ("st", "lora", "vpt")})
    x = torch.randn(2, 3, 32, 32)
    for task in ("st", "lora", "vpt"):
        alone, _ = load_run(runs[task][0])
        with torch.no_grad():
            assert torch.equal(multi(x, task), alone(x)), task
    memory = multi.memory()
    one = unique_bytes([multi.models["st"]])
    # three tasks hold one backbone plus their own small parts: far from three full models
    assert memory["separate_bytes"] > 2.5 * one and memory["shared_bytes"] < 1.2 * one
    frozen = [p for p in multi.models["lora"].parameters() if not p.requires_grad]
    shared = {id(p) for p in multi.models["st"].parameters()}
    assert sum(id(p) in shared for p in frozen) >= len(frozen) - 2  # all but LoRA's own bookkeeping


def test_a_run_on_other_backbone_weights_is_refused(runs):
    with pytest.raises(ValueError, match="trained on other backbone weights"):
        MultiTask({"st": runs["st"][0], "other": runs["other"][0]})
    with pytest.raises(ValueError, match="serves st"):
        MultiTask({"st": runs["st"][0]})(torch.randn(1, 3, 32, 32), "pets")


def test_predict_with_several_runs_gives_each_runs_own_predictions(runs, capsys):
    image = str(sorted((runs["st"][1] / "val").rglob("*.png"))[0])
    assert main(["predict", "--run", str(runs["st"][0]), "--run", str(runs["lora"][0]), image, "--top-k", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    for task in ("st", "lora"):
        assert out[0]["tasks"][task] == predict_run(runs[task][0], [image], top_k=2)[0]["top"]
