"""Image datasets named by a spec string, with the backbone's transforms.

    folder:PATH        ImageFolder layout: PATH/train/<class>/..., PATH/val/ (or PATH/test/)  (folders.py)
    vtab:ROOT/TASK     VTAB-1K list files (NOAH's layout): train800val200.txt, test.txt, ...  (folders.py)
    cifar100:ROOT      torchvision's CIFAR-100 (--download fetches it where a network exists)
    svhn:ROOT          torchvision's SVHN (needs scipy)
    food101:ROOT       torchvision's Food-101
    mnist:ROOT, fashionmnist:ROOT, torchvision:NAME:ROOT   see torchvision_sets.py

Unreadable images are skipped and counted (``strict=False``) or fail with their path.
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import UserError
from ..extras import missing_module, require_extra
from .options import AUGMENTS, IMAGE_KINDS as KINDS

IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class DataError(UserError):
    """A problem with the user's data: missing paths, bad labels, unreadable files."""


@dataclass
class DataSpec:
    kind: str
    path: Path
    raw: str
    name: str = ""  # the torchvision dataset class of torchvision:NAME:ROOT

    @property
    def augment(self) -> str:
        """'vtab' (direct resize, no augmentation: the VTAB-1K protocol) or 'full'."""
        return "vtab" if self.kind == "vtab" else "full"


def parse_data_spec(spec: str) -> DataSpec:
    kind, sep, path = spec.partition(":")
    name = ""
    if kind == "torchvision":
        name, _, path = path.partition(":")
        if not name or not path:
            raise DataError(f"--data {spec!r}: expected torchvision:NAME:ROOT, e.g. torchvision:DTD:./data")
    if not sep or kind not in KINDS or not path:
        raise DataError(f"--data {spec!r}: expected KIND:PATH with KIND one of {', '.join(KINDS)} "
                        "(e.g. folder:./pets, vtab:./vtab-1k/cifar, cifar100:./data, fashionmnist:./data, "
                        "torchvision:DTD:./data)")
    return DataSpec(kind, Path(path).expanduser(), spec, name)


def augment_mode(spec: DataSpec, augment: str = "auto") -> str:
    """The transform family of a recorded augment: 'vtab' (resize only), 'full' (random-resized
    crop and flip) or 'crop' (no flip). A run records its chosen augment; only runs written before
    the choice was recorded hold 'auto', which then meant none for vtab: and crop-flip otherwise."""
    if augment not in AUGMENTS:
        raise DataError(f"augment={augment!r}: expected one of {', '.join(AUGMENTS)}")
    if augment == "auto":
        return spec.augment
    return {"none": "vtab", "crop-flip": "full", "crop": "crop"}[augment]


class ChosenLater:
    """A transform decided after the datasets are built (--augment auto looks at their size)."""

    def __init__(self) -> None:
        self.transform: Optional[Callable] = None

    def __call__(self, image):
        return self.transform(image)


@dataclass
class ImageData:
    train: Dataset
    eval: Dataset
    num_classes: int
    classes: list[str]
    eval_split: str          # which split evaluation reads ("val", "test")
    augment: str = "auto"    # the training augmentation used: none, crop-flip or crop
    augment_reason: str = ""  # why: "auto: ..." when chosen here, else "" (given)


def rgb_loader(path: str | Path) -> Image.Image:
    """Open an image as RGB (grayscale, palette and RGBA images are converted; 16-bit and 32-bit
    grayscale are scaled to 8 bits, where PIL's own conversion would clip them to white)."""
    with open(path, "rb") as f:
        img = Image.open(f)
        img.load()
    if img.mode.startswith("I"):
        import numpy as np

        values = np.asarray(img, dtype=np.float64)
        bits = 16 if img.mode.startswith("I;16") or values.max() < 65536 else 32
        img = Image.fromarray((values / (2 ** bits - 1) * 255).round().clip(0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


def user_image_paths(paths: list[str | Path]) -> list[Path]:
    """The images a user named: files as given, folders as the image files inside them (sorted)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS)
            if not found:
                raise DataError(f"{p} is a folder with no image files ({', '.join(IMG_EXTENSIONS[:4])}, ...)")
            out += found
        else:
            out.append(p)
    return out


def read_user_image(path: str | Path) -> Image.Image:
    """An image the user named on the command line, as RGB; missing or unreadable: one line."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        return rgb_loader(path)
    except IMAGE_ERRORS as e:
        raise DataError(f"cannot read {path}: {e}") from None


class ListDataset(Dataset):
    """(path, label) samples read with ``rgb_loader``."""

    def __init__(self, samples: list[tuple[Path, int]], transform: Optional[Callable] = None) -> None:
        self.samples = samples
        self.targets = [label for _, label in samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        img = rgb_loader(path)
        return (self.transform(img) if self.transform else img), label


class SafeDataset(Dataset):
    """Returns None for a sample that cannot be read (counted by ``collate_skipping``), or raises
    a DataError naming its file when ``strict``."""

    def __init__(self, base: Dataset, strict: bool = False) -> None:
        self.base, self.strict = base, strict

    def __len__(self) -> int:
        return len(self.base)

    def sample_name(self, i: int) -> str:
        samples = getattr(self.base, "samples", None) or getattr(self.base, "_image_files", None)
        if samples is not None:
            s = samples[i]
            return str(s[0] if isinstance(s, tuple) else s)
        return f"sample {i}"

    def __getitem__(self, i: int):
        try:
            return self.base[i]
        except IMAGE_ERRORS as e:
            if self.strict:
                raise DataError(f"cannot read {self.sample_name(i)}: {e}") from None
            return None


class SeededDataset(Dataset):
    """Indexed by (index, seed): every random transform of a sample is drawn from its own seed,
    so a sample looks the same whatever worker loads it and however a run was interrupted."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        py_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            torch.manual_seed(seed)
            try:
                return self.base[index]
            finally:
                random.setstate(py_state)


def quiet_worker(worker_id: int) -> None:
    """A DataLoader worker leaves SIGINT and SIGTERM to the main process, which stops the run
    cleanly (a Ctrl-C reaches every process of the terminal's group)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@contextmanager
def worker_batches(loader: torch.utils.data.DataLoader) -> Iterator[Any]:
    """Iterate a DataLoader whose worker processes are shut down however the iteration ends.

    The workers ignore SIGTERM (``quiet_worker``), so the terminate-then-join that multiprocessing
    runs at exit cannot end them: an error raised while the iterator is still referenced (by the
    error's own traceback) would leave the process waiting for them forever. Shutting them down
    here does not depend on when the iterator is collected. ``_shutdown_workers`` is torch's own
    clean-up (what the iterator's ``__del__`` calls); a single-process iterator has none.
    """
    batches = iter(loader)
    try:
        yield batches
    finally:
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def collate_skipping(batch: list[Any]):
    """Default collation of the readable samples; returns (images, labels, number skipped)."""
    good = [b for b in batch if b is not None]
    skipped = len(batch) - len(good)
    if not good:
        return None, None, skipped
    images, labels = torch.utils.data.default_collate(good)
    return images, labels, skipped


# --- transforms -----------------------------------------------------------------------------

def make_transforms(model: torch.nn.Module | dict, augment: str) -> tuple[Callable, Callable]:
    """(train, eval) transforms from the backbone's pretrained config (mean/std, interpolation), or
    from such a config itself (an exported file's recorded preprocessing).

    'vtab': direct resize to the input size, no augmentation, for both (the VTAB-1K protocol).
    'full': random-resized crop and flip for training, resize + centre crop for evaluation.
    'crop': 'full' without the flip (digits, letters).
    """
    from timm.data import create_transform  # the field's transforms, for any host's preprocessing

    from ..hosts import host_for

    cfg = model if isinstance(model, dict) else host_for(model).data_config(model)
    common = dict(input_size=cfg["input_size"], interpolation=cfg["interpolation"], mean=cfg["mean"], std=cfg["std"])
    if augment == "vtab":
        t = create_transform(**common, is_training=False, crop_pct=1.0, crop_mode="squash")
        return t, t
    train = create_transform(**common, is_training=True, hflip=0.0 if augment == "crop" else 0.5, color_jitter=None)
    evaluation = create_transform(**common, is_training=False, crop_pct=cfg["crop_pct"],
                                  crop_mode=cfg["crop_mode"])
    return train, evaluation


# --- the dataset kinds (folders and VTAB-1K lists: folders.py) ---------------------------------

def _torchvision(spec: DataSpec, train_tf, eval_tf, download: bool) -> ImageData:
    import torchvision.datasets as tvd

    root = str(spec.path)
    if spec.kind == "svhn":
        require_extra("data", "svhn: (torchvision reads its .mat files with scipy)")
    try:
        if spec.kind == "cifar100":
            train = tvd.CIFAR100(root, train=True, transform=train_tf, download=download)
            ev = tvd.CIFAR100(root, train=False, transform=eval_tf, download=download)
            classes = list(train.classes)
        elif spec.kind == "svhn":
            train = tvd.SVHN(root, split="train", transform=train_tf, download=download)
            ev = tvd.SVHN(root, split="test", transform=eval_tf, download=download)
            classes = [str(i) for i in range(10)]
        else:
            train = tvd.Food101(root, split="train", transform=train_tf, download=download)
            ev = tvd.Food101(root, split="test", transform=eval_tf, download=download)
            classes = list(train.classes)
    except RuntimeError as e:
        hint = "" if download else " (add --download to fetch it where a network exists)"
        raise DataError(f"{spec.kind} under {root}: {e}{hint}") from None
    return ImageData(train, ev, len(classes), classes, "test")


def _torchvision_kinds(spec: DataSpec, train_tf, eval_tf, download: bool) -> ImageData:
    from . import torchvision_sets as tvdata

    hint = "" if download else " (add --download to fetch it where a network exists)"
    try:
        if spec.kind == "torchvision":
            train, ev, classes, split = tvdata.by_name(spec.name, spec.path, train_tf, eval_tf, download)
        else:
            (train, ev, classes), split = tvdata.mnist_like(spec.kind, spec.path, train_tf, eval_tf, download), "test"
    except RuntimeError as e:
        raise DataError(f"{spec.raw}: {e}{hint}") from None
    except ImportError as e:
        raise missing_module(e, spec.raw) from None
    except TypeError as e:
        raise DataError(f"{spec.raw}: {e}") from None
    return ImageData(train, ev, len(classes), classes, split)


def load_image_data(spec: str | DataSpec, model: torch.nn.Module | dict, download: bool = False,
                    strict: bool = False, augment: str = "auto", train_samples: int = 0,
                    eval_samples: int = 0, seed: int = 0, eval_only: bool = False,
                    epochs: Optional[int] = None) -> ImageData:
    """Train and evaluation datasets for a spec, with the model's transforms (or those of a data
    config: ``make_transforms``), unreadable-image safe.

    train_samples / eval_samples > 0 take a class-balanced subset of that many images, drawn
    with `seed` (the same for every method at a given seed). augment 'auto' with ``epochs`` (a
    new run) is chosen from the training set's size and the run's length
    (``options.choose_augment``); without ``epochs`` it is a recorded run's old 'auto'.
    """
    from .folders import folder_data, vtab_data  # they build on this module's datasets
    from .options import choose_augment

    spec = parse_data_spec(spec) if isinstance(spec, str) else spec
    choose = augment == "auto" and epochs is not None
    train_tf, eval_tf = (ChosenLater(), ChosenLater()) if choose else make_transforms(model, augment_mode(spec, augment))
    if spec.kind == "folder":
        data = folder_data(spec, train_tf, eval_tf, eval_only)
    elif spec.kind == "vtab":
        data = vtab_data(spec, train_tf, eval_tf)
    elif spec.kind in ("mnist", "fashionmnist", "torchvision"):
        data = _torchvision_kinds(spec, train_tf, eval_tf, download)
    else:
        data = _torchvision(spec, train_tf, eval_tf, download)
    if train_samples or eval_samples:
        from .torchvision_sets import balanced_subset, labels_of

        for split, n, stream in (("train", train_samples, 0), ("eval", eval_samples, 1)):
            if n:
                base = getattr(data, split)
                # A separate stream per split, so the eval subset does not move with train_samples.
                indices = balanced_subset(labels_of(base), n, seed * 2 + stream)
                setattr(data, split, torch.utils.data.Subset(base, indices))
    data.augment = {"vtab": "none", "full": "crop-flip", "crop": "crop"}[augment_mode(spec, augment)] if not choose else ""
    if choose:
        data.augment, data.augment_reason = choose_augment(spec.kind, spec.name, len(data.train), epochs)
        train_tf.transform, eval_tf.transform = make_transforms(model, augment_mode(spec, data.augment))
    data.train, data.eval = SafeDataset(data.train, strict), SafeDataset(data.eval, strict)
    return data
