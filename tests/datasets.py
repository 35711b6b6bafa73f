"""Small datasets written in each dataset's own on-disk format, for tests (no network)."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def class_image(label: int, index: int, size: int = 32, mode: str = "RGB") -> Image.Image:
    """An image whose class is visible: a bright square at a class-dependent place, on noise."""
    rng = np.random.default_rng(label * 1000 + index)
    arr = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
    q = size // 2
    y, x = divmod(label % 4, 2)
    arr[y * q:(y + 1) * q, x * q:(x + 1) * q, label % 3] = 230
    return Image.fromarray(arr).convert(mode)


def make_folder(root: Path, classes: int = 3, train: int = 8, val: int = 4, eval_split: str = "val") -> Path:
    for split, n in (("train", train), (eval_split, val)):
        for c in range(classes):
            d = root / split / f"class_{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                class_image(c, i + (0 if split == "train" else 500)).save(d / f"{i}.png")
    return root


def make_vtab_task(task_dir: Path, classes: int = 3, train: int = 8, test: int = 4) -> Path:
    """NOAH's layout: images/<split>/<file>.jpg and list files '<path> <label>'."""
    lists = {"train800val200.txt": [], "train800.txt": [], "val200.txt": [], "test.txt": []}
    for split, n in (("train", train), ("test", test)):
        (task_dir / "images" / split).mkdir(parents=True, exist_ok=True)
        for c in range(classes):
            for i in range(n):
                rel = f"images/{split}/{c}_{i}.jpg"
                class_image(c, i + (0 if split == "train" else 500)).save(task_dir / rel, quality=95)
                if split == "test":
                    lists["test.txt"].append(f"{rel} {c}")
                else:
                    lists["train800val200.txt"].append(f"{rel} {c}")
                    lists["train800.txt" if i < n * 4 // 5 else "val200.txt"].append(f"{rel} {c}")
    for name, lines in lists.items():
        (task_dir / name).write_text("\n".join(lines) + "\n")
    return task_dir


def make_cifar100(root: Path, train: int = 20, test: int = 10) -> Path:
    """cifar-100-python/{train,test,meta}: pickled dicts of uint8 rows, as torchvision reads them."""
    d = root / "cifar-100-python"
    d.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", train), ("test", test)):
        labels = [i % 100 for i in range(n)]
        data = np.stack([np.asarray(class_image(l, i)).transpose(2, 0, 1).reshape(-1) for i, l in enumerate(labels)])
        with open(d / name, "wb") as f:
            pickle.dump({"data": data, "fine_labels": labels, "coarse_labels": [l // 5 for l in labels]}, f)
    with open(d / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)],
                     "coarse_label_names": [f"g{i}" for i in range(20)]}, f)
    return root


def make_svhn(root: Path, train: int = 20, test: int = 10) -> Path:
    """{train,test}_32x32.mat: X (32, 32, 3, N) uint8 and y (N, 1) with 10 standing for digit 0."""
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", train), ("test", test)):
        labels = [i % 10 for i in range(n)]
        x = np.stack([np.asarray(class_image(l, i)) for i, l in enumerate(labels)], axis=-1)
        y = np.array([[l if l else 10] for l in labels], dtype=np.uint8)
        savemat(str(root / f"{name}_32x32.mat"), {"X": x, "y": y})
    return root


def make_food101(root: Path, classes: int = 3, train: int = 4, test: int = 2) -> Path:
    """food-101/meta/{classes.txt,train.json,test.json} and food-101/images/<class>/<id>.jpg."""
    base = root / "food-101"
    names = [f"dish_{c}" for c in range(classes)]
    (base / "meta").mkdir(parents=True, exist_ok=True)
    (base / "meta" / "classes.txt").write_text("\n".join(names) + "\n")
    for split, n in (("train", train), ("test", test)):
        listing = {}
        for c, name in enumerate(names):
            (base / "images" / name).mkdir(parents=True, exist_ok=True)
            ids = [f"{split}{i}" for i in range(n)]
            for i, ident in enumerate(ids):
                class_image(c, i + (0 if split == "train" else 500)).save(base / "images" / name / f"{ident}.jpg")
            listing[name] = [f"{name}/{ident}" for ident in ids]
        (base / "meta" / f"{split}.json").write_text(json.dumps(listing))
    return root
