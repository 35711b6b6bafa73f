"""No run lost, no traceback for a user's mistake: each fault found by trying to break it, as a
test (numbers are the reliability issue's items)."""
import json
import os
import stat

import numpy as np
import pytest
import torch
from conftest import tiny_vit
from data_files import make_folder, make_vtab_task
from PIL import Image

import sparse_tuning as st
from sparse_tuning.cli import main

MODEL = ["--model", "st_vit_micro_patch4_32", "--no-pretrained"]
FAST = ["--epochs", "1", "--batch-size", "8", "--num-workers", "0", "--warmup-epochs", "0"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("data") / "ds", classes=3, train=8, val=4)


def train(folder, out, *extra):
    return main(["train", *MODEL, "--data", f"folder:{folder}", *FAST, "--out", str(out), *extra])


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and p.name != ".lock"}


def one_line_error(capsys, code, *needles):
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


# 1. --resume of a finished run
def test_resume_of_a_finished_run_is_refused_and_changes_nothing(folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(folder, run) == 0
    before = snapshot(run)
    one_line_error(capsys, main(["train", "--resume", str(run)]), "is finished", "--epochs")
    assert snapshot(run) == before
    results = json.loads((run / "results.json").read_text())
    assert results["final"]["epoch"] == 0 and "top1" in results["final"]


def test_a_finished_run_is_extended_with_more_epochs(folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(folder, run) == 0
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["final"]["epoch"] == 1
    assert json.loads((run / "config.json").read_text())["train"]["epochs"] == 2
    one_line_error(capsys, main(["train", "--resume", str(run), "--batch-size", "4"]), "--epochs")


# 3. a folder holding the user's own files
def test_a_new_run_refuses_a_folder_of_other_files(folder, tmp_path, capsys, monkeypatch):
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "settings"}')
    (mine / "metrics.jsonl").write_text('{"mine": 1}\n')
    before = snapshot(mine)
    monkeypatch.chdir(mine)
    one_line_error(capsys, main(["train", *MODEL, "--data", f"folder:{folder}", *FAST, "--config", "config.json",
                                 "--out", "."]))
    one_line_error(capsys, train(folder, mine), "holds other files")
    assert snapshot(mine) == before


# 4. stopped between an epoch's last step and its evaluation
def test_a_resume_runs_the_evaluation_a_stop_interrupted(folder, tmp_path, monkeypatch):
    from sparse_tuning.training import loop

    run = tmp_path / "run"
    real = loop.Trainer.evaluate

    def dies(self, epoch):
        raise SystemExit("killed")

    monkeypatch.setattr(loop.Trainer, "evaluate", dies)
    with pytest.raises(SystemExit):
        train(folder, run, "--save-every", "3")  # 3 steps per epoch: a checkpoint at the epoch's end
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 3
    monkeypatch.setattr(loop.Trainer, "evaluate", real)
    assert main(["train", "--resume", str(run)]) == 0
    evals = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"split"' in l]
    assert [e["epoch"] for e in evals] == [0]
    assert json.loads((run / "results.json").read_text())["best"]["epoch"] == 0


# 5. stopped before the first checkpoint
def test_a_run_without_a_checkpoint_resumes_from_its_start(folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(folder, run) == 0
    import shutil

    shutil.rmtree(run / "checkpoints")
    (run / "results.json").unlink()
    one_line_error(capsys, train(folder, run), "--resume")
    assert main(["train", "--resume", str(run)]) == 0
    assert json.loads((run / "results.json").read_text())["final"]["epoch"] == 0


# 6. a resume checks what it resumes before it changes anything
@pytest.mark.parametrize("change,needle", [
    ("class", "data changed"), ("images", "steps per epoch"), ("keep_rate", "sparse_tuning.keep_rate"),
])
def test_a_resume_that_does_not_fit_changes_nothing(tmp_path, capsys, change, needle):
    data = make_folder(tmp_path / "ds", classes=3, train=8, val=4)
    run = tmp_path / "run"
    assert train(data, run, "--epochs", "2", "--save-every", "3") == 0
    (run / "results.json").unlink()
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())
    assert latest["step"] == 6
    # back to the epoch-1 checkpoint: an unfinished run
    (run / "checkpoints" / "latest.json").write_text(json.dumps({"step": 3, "folder": "step-0000003"}))
    if change == "class":
        make_folder(tmp_path / "extra", classes=4, train=8, val=4)
        (tmp_path / "extra" / "train" / "class_3").rename(data / "train" / "class_3")
        (tmp_path / "extra" / "val" / "class_3").rename(data / "val" / "class_3")
    elif change == "images":
        for p in sorted((data / "train" / "class_0").iterdir())[:4]:
            p.unlink()
    else:
        cfg = json.loads((run / "config.json").read_text())
        cfg["sparse_tuning"]["keep_rate"] = 0.5
        (run / "config.json").write_text(json.dumps(cfg))
    before = snapshot(run)
    one_line_error(capsys, main(["train", "--resume", str(run)]), needle)
    assert snapshot(run) == before


# 7. after a NaN loss, a resume may lower the learning rate
def test_a_resume_may_lower_the_learning_rate(folder, tmp_path, capsys, monkeypatch):
    """The loss turns NaN at step 3 (planted: the same every time), after the checkpoint of step
    2; the resume at a lower rate continues from there and finishes."""
    import torch
    from conftest import nan_loss_at

    real_ce = nan_loss_at(monkeypatch, 3)
    run = tmp_path / "run"
    assert train(folder, run, "--epochs", "2", "--lr", "0.01", "--save-every", "1", "--log-every", "1") == 2
    assert "loss became nan at step 3" in capsys.readouterr().err
    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", real_ce)
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 2
    assert main(["train", "--resume", str(run), "--lr", "0.001"]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["lr"] == 0.001
    lrs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"lr"' in l]
    assert [l["step"] for l in lrs] == [1, 2, 3, 4, 5, 6] and max(l["lr"] for l in lrs[2:]) <= 0.001


# 9. what a crash or a full disk leaves behind
def test_a_truncated_metrics_line_and_stale_temporaries_do_not_block_a_resume(folder, tmp_path):
    run = tmp_path / "run"
    assert train(folder, run, "--epochs", "2", "--save-every", "3", "--log-every", "1") == 0
    (run / "results.json").unlink()
    (run / "checkpoints" / "latest.json").write_text(json.dumps({"step": 3, "folder": "step-0000003"}))
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "loss": 0.1')  # cut short by a full disk
    (run / ".results.json.abc.tmp").write_text("half")
    (run / "checkpoints" / ".latest.json.def.tmp").write_text("half")
    assert main(["train", "--resume", str(run)]) == 0
    assert not list(run.rglob("*.tmp"))
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines if "split" not in l] == [1, 2, 3, 4, 5, 6]


def test_written_files_have_the_usual_permissions_and_absolute_data_paths(folder, tmp_path, monkeypatch):
    monkeypatch.chdir(folder.parent)
    run = tmp_path / "run"
    assert main(["train", *MODEL, "--data", f"folder:{folder.name}", *FAST, "--out", str(run)]) == 0
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.json", "results.json", "trainable.safetensors", "adapters.safetensors"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o666 & ~umask, name
    assert json.loads((run / "config.json").read_text())["data"] == f"folder:{folder}"
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--run", str(run)]) == 0  # from another directory
    assert main(["export", "--run", str(run), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0
    for path in (run / "eval-val.json", tmp_path / "m.pt"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
    assert not list(tmp_path.rglob("*.tmp"))


# 11. option values that train wrongly
@pytest.mark.parametrize("flag,value", [
    ("--clip-grad", "-1"), ("--label-smoothing", "-0.5"), ("--label-smoothing", "nan"), ("--mixup", "nan"),
    ("--lr", "inf"), ("--device", "foo"),
])
def test_option_values_that_would_train_wrongly_are_refused(folder, tmp_path, capsys, flag, value):
    one_line_error(capsys, train(folder, tmp_path / "run", flag, value), flag.lstrip("-").replace("-", "_"))
    assert not (tmp_path / "run").exists()


def test_an_unknown_compile_backend_is_one_line(folder, tmp_path, capsys):
    one_line_error(capsys, train(folder, tmp_path / "run", "--compile", "--compile-backend", "nonsense"),
                   "compile_backend")
    assert not (tmp_path / "run").exists()


def test_a_warmup_longer_than_the_run_is_said(folder, tmp_path, capsys):
    assert main(["train", *MODEL, "--data", f"folder:{folder}", "--epochs", "1", "--batch-size", "8",
                 "--num-workers", "0", "--warmup-epochs", "3", "--out", str(tmp_path / "run")]) == 0
    assert "peak learning rate 0.001 is never reached" in capsys.readouterr().out


# 12. evaluation on other data
def test_eval_refuses_data_whose_classes_are_not_the_runs(folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(folder, run) == 0
    other = make_folder(tmp_path / "other", classes=3, train=1, val=2)
    (other / "val" / "class_0").rename(other / "val" / "class_9")
    (other / "train" / "class_0").rename(other / "train" / "class_9")
    one_line_error(capsys, main(["eval", "--run", str(run), "--data", f"folder:{other}"]), "classes are not the run's")
    same = make_folder(tmp_path / "same", classes=3, train=1, val=2)
    assert main(["eval", "--run", str(run)]) == 0
    assert main(["eval", "--run", str(run), "--data", f"folder:{same}"]) == 0
    files = sorted(p.name for p in run.glob("eval-*.json"))
    assert len(files) == 2 and "eval-val.json" in files
    recorded = {json.loads((run / f).read_text())["data"] for f in files}
    assert recorded == {f"folder:{folder}", f"folder:{same}"}


# 13. a symlink loop in an image folder
def test_a_symlink_loop_in_an_image_folder_is_not_followed(tmp_path):
    from sparse_tuning.data.images import load_image_data

    root = make_folder(tmp_path / "ds", classes=3, train=8, val=4)
    os.symlink("..", root / "train" / "class_0" / "loop")
    data = load_image_data(f"folder:{root}", tiny_vit())
    assert len(data.train) == 24
    assert sorted(data.train.base.targets) == [0] * 8 + [1] * 8 + [2] * 8


# 14. VTAB-1K list files and checkpoint pointers
@pytest.mark.parametrize("edit,needle", [
    (lambda t: t / "train800val200.txt", "5000000"),
    (lambda t: t / "test.txt", "never has"),
    (lambda t: None, "outside the task folder"),
])
def test_vtab_lists_with_impossible_labels_or_paths_are_refused(tmp_path, edit, needle):
    from sparse_tuning.data.images import DataError, load_image_data

    task = make_vtab_task(tmp_path / "task", classes=3, train=8, test=4)
    path = edit(task)
    if needle == "5000000":
        path.write_text(path.read_text() + "images/train/0.png 5000000\n" if (task / "images/train/0.png").exists()
                        else path.read_text().replace(path.read_text().splitlines()[0].rsplit(" ", 1)[1] + "\n",
                                                      "5000000\n", 1))
        needle = "labels must be 0..K-1"
    elif needle == "never has":
        first = path.read_text().splitlines()[0].rsplit(" ", 1)[0]
        path.write_text(path.read_text() + f"{first} 7\n")
    else:
        (tmp_path / "secret.png").write_bytes((task / path_of(task)).read_bytes())
        lst = task / "test.txt"
        lst.write_text(lst.read_text() + "../secret.png 0\n")
    with pytest.raises(DataError, match=needle):
        load_image_data(f"vtab:{task}", tiny_vit())


def path_of(task):
    return (task / "test.txt").read_text().splitlines()[0].rsplit(" ", 1)[0]


@pytest.mark.parametrize("pointer", ["missing", "damaged"])
def test_without_a_readable_latest_json_the_newest_complete_checkpoint_resumes(folder, tmp_path, pointer):
    run = tmp_path / "run"
    assert train(folder, run, "--epochs", "2", "--log-every", "1") == 0
    (run / "results.json").unlink()
    import shutil

    shutil.rmtree(run / "checkpoints" / "step-0000006")
    latest = run / "checkpoints" / "latest.json"
    latest.unlink() if pointer == "missing" else latest.write_text('{"step": 6, "fol')
    assert main(["train", "--resume", str(run)]) == 0
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines() if '"split"' not in l]
    assert steps == [1, 2, 3, 4, 5, 6]  # steps 1-3 kept: resumed at step 3, not restarted


def test_a_users_nested_config_is_not_taken_for_a_run(folder, tmp_path, capsys):
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "config.json").write_text(json.dumps({"model": "x", "method": "lora", "train": {"epochs": 2}}))
    before = snapshot(mine)
    one_line_error(capsys, train(folder, mine), "holds other files")
    one_line_error(capsys, main(["train", "--resume", str(mine)]), "not a run folder")
    assert snapshot(mine) == before


def test_a_checkpoint_pointer_outside_the_run_is_refused(folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(folder, run, "--epochs", "2") == 0
    (run / "results.json").unlink()
    (run / "checkpoints" / "latest.json").write_text(json.dumps({"step": 3, "folder": "../../elsewhere"}))
    one_line_error(capsys, main(["train", "--resume", str(run)]), "not a checkpoint folder")


# 15. every image unreadable
def test_a_run_whose_images_are_all_unreadable_stops(tmp_path, capsys):
    data = make_folder(tmp_path / "ds", classes=3, train=8, val=4)
    for p in (data / "train").rglob("*.png"):
        p.write_bytes(b"not an image")
    one_line_error(capsys, train(data, tmp_path / "run"), "no training image could be read")
    assert not (tmp_path / "run" / "results.json").exists()


# 16. 16-bit grayscale
def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    from sparse_tuning.data.images import rgb_loader

    values = np.array([[0, 16384], [32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    rgb = np.asarray(rgb_loader(tmp_path / "deep.png"))
    assert rgb[..., 0].tolist() == [[0, 64], [128, 255]]


# 17. a refused adapter file leaves the model as it was
def test_a_refused_adapter_file_leaves_the_model_unpatched(tmp_path):
    model = st.apply(tiny_vit(), st.SparseTuningConfig(bottleneck=4))
    st.save_adapters(model, tmp_path / "a.safetensors")
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tmp_path / "a.safetensors"))
    from safetensors import safe_open

    with safe_open(str(tmp_path / "a.safetensors"), "pt") as f:
        meta = f.metadata()
    tensors["blocks.0.adapter.up.weight"] = torch.zeros(3, 3)
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    plain = tiny_vit()
    with pytest.raises(ValueError, match="other shapes"):
        st.load_adapters(plain, tmp_path / "bad.safetensors")
    assert getattr(plain, "sparse_tuning", None) is None and type(plain).__name__ == "VisionTransformer"
    assert all(p.requires_grad for p in plain.parameters())


# 18. video frames normalised like the backbone's images
def test_video_clips_use_the_backbones_normalisation(tmp_path):
    from data_files import make_video_root

    from sparse_tuning.training.config import resolve_config
    from sparse_tuning.training.run import load_data
    from sparse_tuning.hosts import build_architecture

    root = make_video_root(tmp_path / "videos", per_class=2, frames=8)
    cfg = resolve_config({"model": "vit_base_patch16_224.orig_in21k", "data": f"kinetics:{root}",
                          "video": {"frames": 4}})
    probe = build_architecture(cfg.model)
    data = load_data(cfg, probe)
    video = data.train.base
    assert video.mean.flatten().tolist() == [0.5] * 3 and video.std.flatten().tolist() == [0.5] * 3


# 19. a folder of images to predict; evaluation data without a train/ folder
def test_predict_takes_a_folder_and_eval_needs_no_training_images(folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(folder, run) == 0
    capsys.readouterr()
    assert main(["predict", "--run", str(run), str(folder / "val" / "class_1")]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 4
    only_val = tmp_path / "only-val"
    make_folder(only_val, classes=3, train=1, val=2)
    import shutil

    shutil.rmtree(only_val / "train")
    assert main(["eval", "--run", str(run), "--data", f"folder:{only_val}"]) == 0
