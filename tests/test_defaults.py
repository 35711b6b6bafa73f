"""The defaults a user gets without asking: learning rate, warmup, batch and augmentation, each
resolved by a rule that is pinned here, recorded in config.json and printed with its reason."""
import json

import pytest
from conftest import tiny_vit
from data_files import make_folder

from sparse_tuning.cli import main
from sparse_tuning.cli.options import field_comments
from sparse_tuning.data import options as data_options
from sparse_tuning.data.images import DataSpec, augment_mode, make_transforms
from sparse_tuning.data.options import choose_augment
from sparse_tuning.training.config import RunConfig, TrainConfig, default_warmup, resolve_config
from sparse_tuning.training.records import load_config_file

MODEL = ["--model", "st_vit_micro_patch4_32", "--no-pretrained"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("data") / "ds", classes=3, train=8, val=4)


@pytest.mark.parametrize("epochs,warmup", [(1, 0.1), (4, 0.4), (5, 0.5), (30, 3.0), (100, 10.0), (300, 10.0)])
def test_the_warmup_is_a_tenth_of_the_run_at_most_ten_epochs(epochs, warmup):
    assert default_warmup(epochs) == pytest.approx(warmup)
    assert TrainConfig(epochs=epochs, lr=1e-3).warmup_epochs == pytest.approx(warmup)
    assert TrainConfig(epochs=epochs, lr=1e-3, warmup_epochs=2).warmup_epochs == 2  # given: kept


@pytest.mark.parametrize("kind,name,images,epochs,augment", [
    ("vtab", "", 50_000, 100, "none"),              # the VTAB-1K protocol, whatever its size
    ("folder", "", 1_000, 100, "none"),             # VTAB-sized
    ("folder", "", 10_000, 100, "none"),            # the bound itself
    ("folder", "", 10_001, 10, "crop-flip"),        # a complete dataset, long enough
    ("folder", "", 50_000, 9, "none"),              # a complete dataset, a short run
    ("cifar100", "", 50_000, 100, "crop-flip"),
    ("fashionmnist", "", 60_000, 30, "crop-flip"),  # clothes: a flip keeps the label
    ("mnist", "", 60_000, 30, "crop"),              # digits: never flipped
    ("svhn", "", 73_257, 30, "crop"),
    ("torchvision", "EMNIST", 100_000, 30, "crop"),
    ("torchvision", "DTD", 20_000, 30, "crop-flip"),
])
def test_auto_augmentation_rule(kind, name, images, epochs, augment):
    chosen, why = choose_augment(kind, name, images, epochs)
    assert chosen == augment and why.startswith("auto: ")


def test_the_augment_help_states_the_rule_as_the_code_has_it():
    help_text = field_comments(RunConfig)["augment"]
    assert f"{data_options.AUTO_AUGMENT_MIN_IMAGES:,} training images or fewer" in help_text
    assert f"fewer than {data_options.AUTO_AUGMENT_MIN_EPOCHS} epochs" in help_text
    for kind in ("mnist", "svhn"):
        assert kind in help_text and kind in data_options.FLIP_CHANGES_LABEL


def test_crop_is_crop_flip_without_the_flip():
    vit = tiny_vit()
    names = lambda t: [type(s).__name__ for s in t.transforms]
    crop, crop_flip = make_transforms(vit, "crop")[0], make_transforms(vit, "full")[0]
    assert "RandomHorizontalFlip" in names(crop_flip) and "RandomHorizontalFlip" not in names(crop)
    assert [n for n in names(crop_flip) if n != "RandomHorizontalFlip"] == names(crop)


def test_a_recorded_auto_keeps_its_old_meaning():
    """Runs written before the rule recorded 'auto': none for vtab:, crop and flip otherwise."""
    from pathlib import Path

    assert augment_mode(DataSpec("vtab", Path("x"), "vtab:x"), "auto") == "vtab"
    assert augment_mode(DataSpec("folder", Path("x"), "folder:x"), "auto") == "full"
    assert augment_mode(DataSpec("folder", Path("x"), "folder:x"), "crop") == "crop"


@pytest.mark.parametrize("method,lr", [("sparse-tuning", 1e-3), ("lora", 1e-3), ("linear", 1e-2),
                                       ("ts-only", 1e-2), ("full", 3e-5), ("da-only", 1e-3)])
def test_the_learning_rate_defaults_to_the_methods(method, lr):
    cfg = resolve_config({"method": method})
    assert cfg.train.lr == lr and cfg.choices["lr"] == f"default for --method {method}"
    given = resolve_config({"method": method, "lr": 0.5})
    assert given.train.lr == 0.5 and given.choices["lr"] == "given"


def test_no_adapters_takes_the_head_only_rate():
    cfg = resolve_config({"method": "sparse-tuning", "sparse_tuning": {"adapters": False}})
    assert cfg.method == "ts-only" and cfg.train.lr == 1e-2


def test_presets_keep_their_rates_and_scale_the_warmup():
    cfg = resolve_config({"preset": "vtab"})
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.warmup_epochs, cfg.train.batch_size) == (1e-2, 100, 10, 64)
    assert cfg.choices["lr"] == "preset vtab" and cfg.choices["warmup_epochs"].startswith("default")
    short = resolve_config({"preset": "full", "epochs": 5})
    assert (short.train.lr, short.train.warmup_epochs) == (1e-3, 0.5)
    assert resolve_config({"epochs": 5, "warmup_epochs": 2}).choices["warmup_epochs"] == "given"


def test_the_batch_defaults_to_32():
    assert resolve_config({}).train.batch_size == 32


def test_a_run_prints_and_records_each_choice_with_its_reason(folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *MODEL, "--data", f"folder:{folder}", "--epochs", "2", "--batch-size", "8",
                 "--num-workers", "0", "--method", "linear", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "lr 0.01 (default for --method linear), warmup 0.2 epochs (default: 10% of 2 epochs, at most 10)" in out
    assert "augmentation: none (auto: 24 training images; crops pay above 10,000)" in out
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["augment"] == "none" and recorded["train"]["lr"] == 0.01
    assert recorded["train"]["warmup_epochs"] == pytest.approx(0.2)
    assert recorded["choices"] == {"lr": "default for --method linear",
                                   "warmup_epochs": "default: 10% of 2 epochs, at most 10", "schedule": "default",
                                   "augment": "auto: 24 training images; crops pay above 10,000"}
    # a resume continues with what was chosen, and says so; a learning rate given at resume has that reason
    assert main(["train", "--resume", str(run), "--epochs", "3", "--lr", "0.005"]) == 0
    out = capsys.readouterr().out
    assert "augmentation: none (auto: 24 training images" in out and "lr 0.005 (given at resume)" in out
    assert json.loads((run / "config.json").read_text())["choices"]["lr"] == "given at resume"


def test_a_null_learning_rate_in_a_config_file_is_the_methods_default(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: linear\ntrain:\n  lr: null\n")
    cfg = resolve_config(load_config_file(path))
    assert cfg.train.lr == 1e-2 and cfg.choices["lr"] == "default for --method linear"


def test_auto_chooses_crops_for_a_long_run_on_many_images(folder, tmp_path, monkeypatch, capsys):
    """With the bounds lowered to this folder's size, auto chooses crop-flip and records it."""
    monkeypatch.setattr(data_options, "AUTO_AUGMENT_MIN_IMAGES", 10)
    monkeypatch.setattr(data_options, "AUTO_AUGMENT_MIN_EPOCHS", 2)
    run = tmp_path / "run"
    assert main(["train", *MODEL, "--data", f"folder:{folder}", "--epochs", "2", "--batch-size", "8",
                 "--num-workers", "0", "--out", str(run)]) == 0
    assert "augmentation: crop-flip (auto: 24 images for 2 epochs)" in capsys.readouterr().out
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["augment"] == "crop-flip" and recorded["choices"]["augment"] == "auto: 24 images for 2 epochs"


def test_a_given_augmentation_is_used_as_given(folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *MODEL, "--data", f"folder:{folder}", "--epochs", "1", "--batch-size", "8",
                 "--num-workers", "0", "--augment", "crop", "--out", str(run)]) == 0
    assert "augmentation: crop (given)" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["augment"] == "crop"


def test_counts_agree_with_their_nouns():
    from sparse_tuning.text import count

    assert [count(1, "epoch"), count(2, "epoch"), count(0.5, "epoch"), count(1.0, "epoch"), count(1000, "image")] == \
        ["1 epoch", "2 epochs", "0.5 epochs", "1 epoch", "1,000 images"]


def test_the_progress_rate_leaves_out_the_first_step(monkeypatch):
    """The first step after a start waits for the loader's workers: its images per second would
    read as a handful. Lines count from the end of the first step, over the window since the last."""
    from sparse_tuning.training import progress as progress_module

    clock = iter([0.0, 10.0, 10.5, 11.0, 11.5])  # start; step 1 took 10 s; then 0.5 s per step
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(progress_module.sys.stderr, "isatty", lambda: False)
    lines = []
    bar = progress_module.Progress(total=4, start=0, enabled=True, log=lines.append, every=2)
    for step in range(1, 5):
        bar.update(step, loss=1.0, images=32)
    assert lines[0].startswith("step 2/4 loss 1.0000 64 images/s")   # step 2 alone: 32 images in 0.5 s
    assert lines[1].startswith("step 4/4 loss 1.0000 64 images/s")   # steps 3-4: 64 images in 1 s
