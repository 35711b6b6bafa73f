"""(Fashion-)MNIST in both layouts, torchvision datasets by name, class-balanced subsets and
--img-size, on files written here in the real formats."""
from collections import Counter

import numpy as np
import pytest
import torch
from data_files import make_eurosat, make_mnist, write_idx

import timm
import sparse_tuning.hosts.timm_models  # noqa: F401  (registers the small ViTs with timm)
from sparse_tuning.data.images import DataError, load_image_data, parse_data_spec
from sparse_tuning.data.torchvision_sets import balanced_subset, read_idx


@pytest.fixture(scope="module")
def model():
    return timm.create_model("st_vit_micro_patch4_32", num_classes=10)


@pytest.mark.parametrize("layout", ["debian", "torchvision"])
@pytest.mark.parametrize("kind", ["fashionmnist", "mnist"])
def test_mnist_kinds_in_both_layouts(tmp_path, model, layout, kind):
    root = make_mnist(tmp_path, layout, folder="FashionMNIST" if kind == "fashionmnist" else "MNIST")
    data = load_image_data(f"{kind}:{root}", model)
    assert data.num_classes == 10 and len(data.train) == 30 and len(data.eval) == 20
    image, label = data.train[13]
    assert image.shape == (3, 32, 32) and label == 3
    # Grayscale replicated: the three channels differ only by the per-channel normalisation.
    assert torch.allclose(image[0] * 0.229 + 0.485, image[1] * 0.224 + 0.456, atol=1e-5)
    if kind == "fashionmnist":
        assert data.classes[0] == "T-shirt/top"


def test_idx_reader_matches_what_was_written(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert (read_idx(write_idx(tmp_path / "x-idx3-ubyte", a, gz=True)) == a).all()
    path = write_idx(tmp_path / "y-idx3-ubyte", a, gz=False)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(path)


def test_torchvision_dataset_by_name_without_splits_holds_out_a_fixed_share(tmp_path, model):
    root = make_eurosat(tmp_path, classes=3, per_class=10)
    a = load_image_data(f"torchvision:EuroSAT:{root}", model)
    b = load_image_data(f"torchvision:EuroSAT:{root}", model)
    assert a.num_classes == 3 and a.classes == ["Land0", "Land1", "Land2"] and a.eval_split == "held-out"
    assert len(a.train) == 24 and len(a.eval) == 6
    assert a.train.base.indices == b.train.base.indices  # the same split every time
    assert not set(a.train.base.indices) & set(a.eval.base.indices)
    assert a.train[0][0].shape == (3, 32, 32)


def test_torchvision_dataset_with_train_flag(tmp_path, model):
    root = make_mnist(tmp_path, "torchvision", folder="KMNIST")
    data = load_image_data(f"torchvision:KMNIST:{root}", model)
    assert len(data.train) == 30 and len(data.eval) == 20 and data.eval_split == "test"


@pytest.mark.parametrize("spec,message", [
    ("torchvision:NoSuchSet:/x", "no dataset 'NoSuchSet'"),
    ("torchvision:eurosat:/x", "did you mean EuroSAT"),
])
def test_torchvision_name_mistakes(tmp_path, model, spec, message):
    with pytest.raises(ValueError, match=message):
        load_image_data(spec, model)


@pytest.mark.parametrize("spec", ["torchvision:DTD", "torchvision::/x"])
def test_torchvision_spec_needs_name_and_root(spec):
    with pytest.raises(DataError, match="torchvision:NAME:ROOT"):
        parse_data_spec(spec)


def test_missing_mnist_files_suggest_download(tmp_path, model):
    with pytest.raises(DataError, match="--download"):
        load_image_data(f"fashionmnist:{tmp_path}", model)


@pytest.mark.parametrize("labels,n", [([0, 1, 2] * 10, 12), ([0] * 20 + [1] * 5 + [2] * 9, 12), ([0, 1] * 4, 100)])
def test_balanced_subset_table(labels, n):
    chosen = balanced_subset(labels, n, seed=3)
    assert len(chosen) == min(n, len(labels)) and chosen == sorted(set(chosen))
    counts = Counter(labels[i] for i in chosen)
    available = Counter(labels)
    # Each class gets min(what it has, a fair share): no class is short while another is over by two.
    fair = sorted(counts.values())
    for c in available:
        short = counts[c] < available[c]
        assert not short or counts[c] >= max(fair) - 1
    assert balanced_subset(labels, n, seed=3) == chosen
    if n < len(labels):
        assert any(balanced_subset(labels, n, seed=s) != chosen for s in range(4, 9))


def test_subsets_in_the_data_loader_depend_only_on_the_seed(tmp_path, model):
    root = make_mnist(tmp_path, "debian", train=60, test=40)
    spec = f"fashionmnist:{root}"
    a = load_image_data(spec, model, train_samples=20, eval_samples=10, seed=1)
    b = load_image_data(spec, model, train_samples=20, eval_samples=10, seed=1)
    c = load_image_data(spec, model, train_samples=20, eval_samples=10, seed=2)
    assert len(a.train) == 20 and len(a.eval) == 10
    assert a.train.base.indices == b.train.base.indices and a.eval.base.indices == b.eval.base.indices
    assert a.train.base.indices != c.train.base.indices
    assert sorted(Counter(a.train[i][1] for i in range(20)).values()) == [2] * 10


def test_img_size_other_than_the_models_trains_and_evaluates(tmp_path, capsys):
    """--img-size reaches the transforms: before, any other size failed in the first forward."""
    from sparse_tuning.cli import main

    root = make_mnist(tmp_path / "data", "debian", train=16, test=8)
    run = tmp_path / "run"
    assert main(["train", "--model", "st_vit_micro_patch4_32", "--no-pretrained", "--img-size", "48",
                 "--data", f"fashionmnist:{root}", "--train-samples", "8", "--eval-samples", "8", "--epochs", "1",
                 "--batch-size", "4", "--num-workers", "0", "--out", str(run)]) == 0
    assert "top-1" in capsys.readouterr().out
    import json
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["img_size"] == 48 and cfg["train_samples"] == 8
    assert main(["eval", "--run", str(run)]) == 0
