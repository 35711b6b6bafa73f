"""torchvision's classification datasets by name, (Fashion-)MNIST as Debian lays it out, and
deterministic class-balanced subsets.

    mnist:ROOT, fashionmnist:ROOT   ROOT/{MNIST,FashionMNIST}/raw/ (torchvision's layout, which
                                    --download fills) or ROOT/*-ubyte[.gz] directly (Debian's
                                    dataset-fashion-mnist: /usr/share/datasets/fashion-mnist)
    torchvision:NAME:ROOT           any torchvision dataset class, e.g. DTD, Flowers102,
                                    OxfordIIITPet, EuroSAT, Caltech101, PCAM, SUN397, GTSRB, STL10

Every image becomes RGB (grayscale is replicated to three channels) before the backbone's
transforms.
"""
from __future__ import annotations

import gzip
import inspect
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import UserError

# Split arguments of datasets whose split names are not ("train", "test") or (train=True/False).
SPLITS: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    "OxfordIIITPet": ({"split": "trainval"}, {"split": "test"}, "test"),
    "FGVCAircraft": ({"split": "trainval"}, {"split": "test"}, "test"),
    "Imagenette": ({"split": "train"}, {"split": "val"}, "val"),
    "CLEVRClassification": ({"split": "train"}, {"split": "val"}, "val"),
    "ImageNet": ({"split": "train"}, {"split": "val"}, "val"),
}
HELD_OUT = 0.2  # share of a dataset without splits (EuroSAT, Caltech101, SUN397) held out for evaluation
MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


class ToRGB:
    """Convert a PIL image to RGB, then apply the backbone's transform (a picklable callable)."""

    def __init__(self, transform: Optional[Callable]) -> None:
        self.transform = transform

    def __call__(self, img: Image.Image):
        img = img.convert("RGB")
        return self.transform(img) if self.transform else img


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format), gzipped or not.

    torchvision's reader opens only the uncompressed files it downloads itself; Debian ships
    them gzipped, so they are read here.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise UserError(f"{path} is not an IDX file of unsigned bytes")
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims)
    if array.size != int(np.prod(shape)):
        raise UserError(f"{path}: expected {int(np.prod(shape))} values, found {array.size} (truncated?)")
    return array.reshape(shape)


class IdxImages(Dataset):
    """MNIST-format images and labels read straight from (gzipped) IDX files."""

    def __init__(self, images: Path, labels: Path, classes: Sequence[str], transform: Optional[Callable]) -> None:
        self.data, self.targets = read_idx(images), read_idx(labels).astype(np.int64).tolist()
        if len(self.data) != len(self.targets):
            raise UserError(f"{images} holds {len(self.data)} images, {labels} {len(self.targets)} labels")
        self.classes, self.transform = list(classes), transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.data[i], mode="L")
        return (self.transform(img) if self.transform else img), self.targets[i]


def _find_idx(root: Path, name: str) -> Optional[Path]:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def mnist_like(kind: str, root: Path, train_tf, eval_tf, download: bool):
    """(train, eval, classes) of mnist: or fashionmnist:, in either layout."""
    import torchvision.datasets as tvd

    cls = tvd.FashionMNIST if kind == "fashionmnist" else tvd.MNIST
    flat = {split: [_find_idx(root, f) for f in files] for split, files in MNIST_FILES.items()}
    if all(p is not None for files in flat.values() for p in files):
        return (IdxImages(*flat["train"], cls.classes, ToRGB(train_tf)),
                IdxImages(*flat["test"], cls.classes, ToRGB(eval_tf)), list(cls.classes))
    train = cls(str(root), train=True, transform=ToRGB(train_tf), download=download)
    ev = cls(str(root), train=False, transform=ToRGB(eval_tf), download=download)
    return train, ev, list(cls.classes)


def by_name(name: str, root: Path, train_tf, eval_tf, download: bool):
    """(train, eval, classes, eval split name) of torchvision.datasets.NAME under root."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, name, None)
    if not (isinstance(cls, type) and issubclass(cls, Dataset)):
        known = [n for n in dir(tvd) if n[0].isupper() and n.lower() == name.lower()]
        hint = f"; did you mean {known[0]}?" if known else " (names are case-sensitive: DTD, Flowers102, EuroSAT...)"
        raise UserError(f"torchvision has no dataset {name!r}{hint}")
    params = inspect.signature(cls).parameters
    extra = {"download": download} if "download" in params else {}
    if name in SPLITS:
        train_kw, eval_kw, eval_split = SPLITS[name]
    elif "split" in params:
        train_kw, eval_kw, eval_split = {"split": "train"}, {"split": "test"}, "test"
    elif "train" in params:
        train_kw, eval_kw, eval_split = {"train": True}, {"train": False}, "test"
    else:
        train_kw = eval_kw = None
        eval_split = "held-out"
    if train_kw is None:
        # One pool, split once with a fixed seed so every run evaluates on the same images.
        train = cls(str(root), transform=ToRGB(train_tf), **extra)
        ev = cls(str(root), transform=ToRGB(eval_tf), **extra)
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).tolist()
        cut = int(round(len(order) * (1 - HELD_OUT)))
        train, ev = torch.utils.data.Subset(train, sorted(order[:cut])), torch.utils.data.Subset(ev, sorted(order[cut:]))
        base = train.dataset
    else:
        train = cls(str(root), transform=ToRGB(train_tf), **train_kw, **extra)
        ev = cls(str(root), transform=ToRGB(eval_tf), **eval_kw, **extra)
        base = train
    classes = getattr(base, "classes", None) or getattr(base, "categories", None)
    classes = list(classes) if classes else [str(i) for i in range(1 + max(labels_of(train)))]
    return train, ev, classes, eval_split


def labels_of(dataset: Dataset) -> list[int]:
    """Every sample's label, read from the dataset's label attribute where it has one (no image
    decoded), else by loading each sample."""
    if isinstance(dataset, torch.utils.data.Subset):
        inner = labels_of(dataset.dataset)
        return [inner[i] for i in dataset.indices]
    for attr in ("targets", "_labels", "labels", "y"):
        values = getattr(dataset, attr, None)
        if values is not None and not callable(values) and len(values) == len(dataset):
            return [int(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]
    samples = getattr(dataset, "_samples", None) or getattr(dataset, "samples", None)
    if samples is not None and len(samples) == len(dataset) and isinstance(samples[0], tuple):
        return [int(s[1]) for s in samples]
    transform, dataset.transform = getattr(dataset, "transform", None), None
    try:
        return [int(dataset[i][1]) for i in range(len(dataset))]
    finally:
        dataset.transform = transform


def balanced_subset(labels: Sequence[int], n: int, seed: int) -> list[int]:
    """n indices, as evenly spread over the classes as the data allows (counts differ by at most
    one where every class has enough), drawn with `seed`; in dataset order. Deterministic: the
    same labels, n and seed give the same subset on any machine."""
    if n >= len(labels):
        return list(range(len(labels)))
    g = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(i)
    pools = [[members[j] for j in torch.randperm(len(members), generator=g).tolist()]
             for _, members in sorted(by_class.items())]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < n:  # round robin: one image per class per round, classes in a drawn order
        order = torch.randperm(len(pools), generator=g).tolist()
        for c in order:
            if depth < len(pools[c]) and len(chosen) < n:
                chosen.append(pools[c][depth])
        depth += 1
    return sorted(chosen)
