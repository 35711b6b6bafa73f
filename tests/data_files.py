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


def moving_square_frames(n: int, size: int = 32, label: int = 0) -> list[np.ndarray]:
    """A square moving right (label 0) or down (label 1); a white bar at x = 3 * i % size marks
    frame i, so a test can tell which frame it got."""
    frames = []
    for i in range(n):
        a = np.full((size, size, 3), 40, np.uint8)
        p = (i * 2) % (size - 8)
        if label % 2 == 0:
            a[12:20, p:p + 8] = (230, 60, 60)
        else:
            a[p:p + 8, 12:20] = (60, 60, 230)
        a[size - 4:, (3 * i) % size] = 255
        frames.append(a)
    return frames


def write_mp4(path: Path, frames: list[np.ndarray], fps: int = 25) -> Path:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 2_000_000
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_frame_folder(path: Path, frames: list[np.ndarray]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(path / f"img_{i:05d}.jpg", quality=95)
    return path


def make_video_root(root: Path, kind: str = "mp4", per_class: int = 4, frames: int = 24) -> Path:
    """ROOT/train.csv and ROOT/val.csv ('path label'), two classes of moving squares."""
    lines = {"train": [], "val": []}
    for split, n in (("train", per_class), ("val", 2)):
        for label in (0, 1):
            for i in range(n):
                name = f"videos/{split}_{label}_{i}" + (".mp4" if kind == "mp4" else "")
                clip = moving_square_frames(frames + i, label=label)
                if kind == "mp4":
                    write_mp4(root / name, clip)
                else:
                    write_frame_folder(root / name, clip)
                lines[split].append(f"{name} {label}")
    for split, ls in lines.items():
        (root / f"{split}.csv").write_text("\n".join(ls) + "\n")
    return root


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    """An IDX file of unsigned bytes (MNIST's format): magic, dims, big-endian sizes, data."""
    import gzip

    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def make_mnist(root: Path, layout: str = "debian", train: int = 30, test: int = 20, classes: int = 10,
               folder: str = "FashionMNIST") -> Path:
    """28x28 grayscale digits-like images and labels i % classes, as Debian ships them
    (ROOT/*-ubyte.gz) or as torchvision keeps them (ROOT/<folder>/raw/*-ubyte)."""
    base = root if layout == "debian" else root / folder / "raw"
    for prefix, n, offset in (("train", train, 0), ("t10k", test, 500)):
        labels = np.array([i % classes for i in range(n)], dtype=np.uint8)
        images = np.stack([np.asarray(class_image(int(l), i + offset, size=28, mode="L")) for i, l in enumerate(labels)])
        write_idx(base / f"{prefix}-images-idx3-ubyte", images, gz=layout == "debian")
        write_idx(base / f"{prefix}-labels-idx1-ubyte", labels, gz=layout == "debian")
    return root


def make_eurosat(root: Path, classes: int = 3, per_class: int = 10) -> Path:
    """torchvision's EuroSAT layout: ROOT/eurosat/2750/<class>/<class>_<i>.jpg (64x64 RGB)."""
    for c in range(classes):
        d = root / "eurosat" / "2750" / f"Land{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            class_image(c, i, size=64).save(d / f"Land{c}_{i}.jpg")
    return root


def train_micro_run(tmp: Path, *options: str, classes: int = 3, train: int = 4, val: int = 2) -> tuple[Path, Path]:
    """A one-epoch run of the micro ViT (a seeded random backbone) on a folder of generated images:
    (run folder, data folder)."""
    from sparse_tuning.cli import main

    folder = make_folder(tmp / "ds", classes=classes, train=train, val=val)
    out = tmp / "run"
    assert main(["train", "--model", "st_vit_micro_patch4_32", "--no-pretrained", "--data", f"folder:{folder}",
                 "--out", str(out), "--epochs", "1", "--batch-size", "4", "--num-workers", "0", *options]) == 0
    return out, folder
