"""Images on disk as users keep them: an ImageFolder tree (folder:PATH) and VTAB-1K list files
(vtab:ROOT/TASK), each checked before any image is read."""
from __future__ import annotations

import os
from pathlib import Path

from .images import DataError, DataSpec, ImageData, ListDataset, rgb_loader


def scan_class_folders(directory: str, class_to_idx: dict[str, int], extensions=None, is_valid_file=None,
                       allow_empty: bool = False) -> list[tuple[str, int]]:
    """torchvision's ImageFolder listing, but a symlinked folder is not followed where it would
    loop (``class_0/loop -> ..``), bring another class's images in, or list a folder twice;
    a link to a folder outside the split is followed once."""
    import os

    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    valid = is_valid_file or (lambda p: has_file_allowed_extension(p, extensions or IMG_EXTENSIONS))
    split = os.path.realpath(directory)
    within = lambda path, folder: path == folder or path.startswith(folder + os.sep)
    samples = []
    for name in sorted(class_to_idx):
        top = os.path.realpath(os.path.join(directory, name))
        seen: set[str] = set()
        for current, dirs, files in os.walk(os.path.join(directory, name), followlinks=True):
            real = os.path.realpath(current)
            if real in seen or (real != top and (within(top, real) or (within(real, split) and not within(real, top)))):
                dirs[:] = []
                continue
            seen.add(real)
            dirs.sort()
            samples += [(os.path.join(current, f), class_to_idx[name]) for f in sorted(files)
                        if valid(os.path.join(current, f))]
    present = {index for _, index in samples}
    empty = sorted(name for name, index in class_to_idx.items() if index not in present)
    if empty and not allow_empty:
        raise FileNotFoundError(f"no image file for the class(es) {', '.join(empty[:5])} under {directory}")
    return samples


def _image_folder(path: Path):
    from torchvision.datasets import ImageFolder

    class LoopSafeImageFolder(ImageFolder):
        @staticmethod
        def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
            return scan_class_folders(directory, class_to_idx, extensions, is_valid_file, allow_empty)

    return LoopSafeImageFolder(str(path), loader=rgb_loader)


def folder_data(spec: DataSpec, train_tf, eval_tf, eval_only: bool = False) -> ImageData:
    root = spec.path
    eval_split = next((s for s in ("val", "test") if (root / s).is_dir()), None)
    if eval_only and eval_split is not None and not (root / "train").is_dir():
        ev = _image_folder(root / eval_split)  # evaluation alone needs no training images
        ev.transform = eval_tf
        return ImageData(ev, ev, len(ev.classes), list(ev.classes), eval_split)
    if not (root / "train").is_dir():
        raise DataError(f"{root}/train not found: folder:PATH expects PATH/train/<class>/<image> "
                        "and PATH/val/ (or PATH/test/)")
    if eval_split is None:
        raise DataError(f"neither {root}/val nor {root}/test exists; one of them holds the evaluation images")
    try:
        train = _image_folder(root / "train")
        ev = _image_folder(root / eval_split)
    except FileNotFoundError as e:
        raise DataError(f"{root}: {e}") from None
    if train.classes != ev.classes:
        only_train = sorted(set(train.classes) - set(ev.classes))
        only_eval = sorted(set(ev.classes) - set(train.classes))
        raise DataError(f"{root}: train/ and {eval_split}/ have different classes "
                        f"(only in train: {only_train[:5]}, only in {eval_split}: {only_eval[:5]})")
    train.transform, ev.transform = train_tf, eval_tf
    return ImageData(train, ev, len(train.classes), list(train.classes), eval_split)


def read_vtab_list(task_dir: Path, name: str) -> list[tuple[Path, int]]:
    """Samples of a VTAB-1K list file: lines 'images/<split>/<file> <label>'."""
    path = task_dir / name
    if not path.is_file():
        raise DataError(f"{path} not found: vtab:ROOT/TASK expects TASK/train800val200.txt and TASK/test.txt")
    samples, missing = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DataError(f"{path}:{n}: expected '<image path> <integer label>', got {line!r}")
        label = int(parts[1])
        if label < 0:
            raise DataError(f"{path}:{n}: label {label} is negative")
        image = task_dir / parts[0]
        relative = os.path.normpath(parts[0])  # lexical: an images/ folder may be a link to shared storage
        if os.path.isabs(relative) or relative == ".." or relative.startswith(".." + os.sep):
            raise DataError(f"{path}:{n}: {parts[0]!r} is outside the task folder; list files name images "
                            "relative to it (images/...)")
        if not image.is_file():
            missing.append(parts[0])
        samples.append((image, label))
    if missing:
        raise DataError(f"{path} names {len(missing)} missing image(s) under {task_dir}, e.g. {missing[:3]}")
    if not samples:
        raise DataError(f"{path} lists no images")
    return samples


def vtab_data(spec: DataSpec, train_tf, eval_tf) -> ImageData:
    if not spec.path.is_dir():
        raise DataError(f"VTAB task folder {spec.path} not found")
    train = read_vtab_list(spec.path, "train800val200.txt")
    test = read_vtab_list(spec.path, "test.txt")
    # Labels are 0..K-1 with every class in the training list: a typo (5000000) or a class seen only
    # in test.txt would otherwise build a head of that many classes, silently.
    labels = sorted({label for _, label in train})
    if labels[-1] != len(labels) - 1:  # the first gap, without building 0..max (a typo may be huge)
        gap = next(i for i, label in enumerate(labels) if label != i)
        raise DataError(f"{spec.path}/train800val200.txt: labels must be 0..K-1 with every class present; "
                        f"label {gap} has no image, and the largest is {labels[-1]}")
    unseen = sorted({label for _, label in test} - set(labels))
    if unseen:
        raise DataError(f"{spec.path}/test.txt has label(s) {unseen[:3]} that train800val200.txt never has")
    num_classes = len(labels)
    return ImageData(ListDataset(train, train_tf), ListDataset(test, eval_tf), num_classes,
                     [str(i) for i in range(num_classes)], "test")
