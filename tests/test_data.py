"""Datasets from small files in each format's own layout, and every kind of bad input."""
import pytest
import torch
from data_files import class_image, make_cifar100, make_folder, make_food101, make_svhn, make_vtab_task
from torch.utils.data import DataLoader

import timm
import sparse_tuning.hosts.timm_models  # noqa: F401  (registers the small ViTs with timm)
from sparse_tuning.data.images import (DataError, SeededDataset, collate_skipping, load_image_data, make_transforms,
                                parse_data_spec)


@pytest.fixture(scope="module")
def model():
    return timm.create_model("st_vit_micro_patch4_32", num_classes=3)


def test_folder(tmp_path, model):
    root = make_folder(tmp_path / "ds", classes=3, train=4, val=2)
    data = load_image_data(f"folder:{root}", model)
    assert data.num_classes == 3 and data.classes == ["class_0", "class_1", "class_2"] and data.eval_split == "val"
    assert len(data.train) == 12 and len(data.eval) == 6
    image, label = data.train[5]
    assert image.shape == (3, 32, 32) and label == 1


def test_folder_with_test_split_and_odd_image_modes(tmp_path, model):
    root = make_folder(tmp_path / "ds", classes=2, train=2, val=1, eval_split="test")
    class_image(0, 9, size=50, mode="L").save(root / "train" / "class_0" / "gray.png")
    class_image(1, 9, size=20, mode="RGBA").save(root / "train" / "class_1" / "rgba.png")
    class_image(1, 8, mode="P").save(root / "train" / "class_1" / "palette.png")
    data = load_image_data(f"folder:{root}", model)
    assert data.eval_split == "test"
    assert all(data.train[i][0].shape == (3, 32, 32) for i in range(len(data.train)))


@pytest.mark.parametrize("breakage,message", [
    (lambda r: None, "train not found"),
    (lambda r: make_folder(r, eval_split="other"), "neither"),
    (lambda r: (make_folder(r), (r / "val" / "class_0").rename(r / "val" / "class_x")), "different classes"),
    (lambda r: (make_folder(r), [p.unlink() for p in (r / "train" / "class_1").iterdir()]), "class_1"),
])
def test_folder_mistakes(tmp_path, model, breakage, message):
    root = tmp_path / "ds"
    breakage(root)
    with pytest.raises(DataError, match=message):
        load_image_data(f"folder:{root}", model)


def test_unreadable_images_are_skipped_and_counted_or_strict(tmp_path, model):
    root = make_folder(tmp_path / "ds", classes=2, train=3, val=1)
    (root / "train" / "class_0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    good = root / "train" / "class_1" / "0.png"
    good.write_bytes(good.read_bytes()[:60])  # truncated
    data = load_image_data(f"folder:{root}", model)
    batches = list(DataLoader(data.train, batch_size=4, collate_fn=collate_skipping))
    assert sum(b[2] for b in batches) == 2
    assert sum(len(b[1]) for b in batches) == 5  # 7 files, 2 unreadable
    strict = load_image_data(f"folder:{root}", model, strict=True)
    with pytest.raises(DataError, match="broken.png"):
        list(DataLoader(strict.train, batch_size=4, collate_fn=collate_skipping))


def test_vtab(tmp_path, model):
    task = make_vtab_task(tmp_path / "vtab" / "dtd", classes=3, train=5, test=2)
    data = load_image_data(f"vtab:{task}", model)
    assert len(data.train) == 15 and len(data.eval) == 6 and data.num_classes == 3 and data.eval_split == "test"
    # VTAB protocol: the same direct resize for training and evaluation, no augmentation.
    train_tf, eval_tf = make_transforms(model, "vtab")
    img = class_image(2, 0, size=48).resize((48, 24))
    assert torch.equal(train_tf(img), eval_tf(img)) and train_tf(img).shape == (3, 32, 32)
    assert not any("Random" in type(t).__name__ for t in train_tf.transforms)


@pytest.mark.parametrize("line,message", [
    ("images/train/0_0.jpg", "expected '<image path> <integer label>'"),
    ("images/train/0_0.jpg cat", "integer label"),
    ("images/train/0_0.jpg -1", "negative"),
    ("images/train/nope.jpg 1", "1 missing image"),
])
def test_vtab_mistakes(tmp_path, model, line, message):
    task = make_vtab_task(tmp_path / "t", classes=2, train=2, test=1)
    (task / "train800val200.txt").write_text(line + "\n")
    with pytest.raises(DataError, match=message):
        load_image_data(f"vtab:{task}", model)


def test_full_dataset_transforms_augment_training_only(model):
    train_tf, eval_tf = make_transforms(model, "full")
    names = [type(t).__name__ for t in train_tf.transforms]
    assert "RandomResizedCropAndInterpolation" in names or "RandomResizedCrop" in names
    assert "RandomHorizontalFlip" in names and "ColorJitter" not in names
    assert not any("Random" in type(t).__name__ for t in eval_tf.transforms)


def test_cifar100(tmp_path, model, monkeypatch):
    import torchvision.datasets.cifar as cifar
    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)  # our files are not the real ones
    data = load_image_data(f"cifar100:{make_cifar100(tmp_path)}", model)
    assert data.num_classes == 100 and len(data.train) == 20 and len(data.eval) == 10
    assert data.train[3][0].shape == (3, 32, 32) and data.train[3][1] == 3


def test_svhn(tmp_path, model, monkeypatch):
    pytest.importorskip("scipy")
    from torchvision.datasets import SVHN
    monkeypatch.setattr(SVHN, "_check_integrity", lambda self: True)
    data = load_image_data(f"svhn:{make_svhn(tmp_path)}", model)
    assert data.num_classes == 10 and len(data.train) == 20
    assert [data.train[i][1] for i in range(3)] == [0, 1, 2]


def test_food101(tmp_path, model):
    data = load_image_data(f"food101:{make_food101(tmp_path)}", model)
    assert data.num_classes == 3 and len(data.train) == 12 and len(data.eval) == 6
    assert data.train[0][0].shape == (3, 32, 32)


def test_missing_torchvision_dataset_suggests_download(tmp_path, model):
    with pytest.raises(DataError, match="--download"):
        load_image_data(f"cifar100:{tmp_path}", model)


@pytest.mark.parametrize("spec", ["cifar100", "imagenet:/x", "folder:", "/just/a/path"])
def test_bad_specs(spec):
    with pytest.raises(DataError, match="expected KIND:PATH"):
        parse_data_spec(spec)


def test_seeded_samples_repeat_exactly_and_keep_the_callers_rng(tmp_path, model):
    root = make_folder(tmp_path / "ds", classes=2, train=2, val=1)
    data = SeededDataset(load_image_data(f"folder:{root}", model).train)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    a, b, c = data[(1, 123)][0], data[(1, 123)][0], data[(1, 124)][0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), before)
