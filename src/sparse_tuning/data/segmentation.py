"""Semantic segmentation data on disk, checked before any image is decoded for training:

- the PASCAL VOC layout: ``ROOT/JPEGImages/NAME.jpg``, ``ROOT/SegmentationClass/NAME.png`` (palette
  PNGs whose palette indices are the classes, 255 the ignored border), and the splits as
  ``ROOT/ImageSets/Segmentation/{train,val}.txt`` (one NAME per line); VOC's 21 class names;
- a plain folder pair per split: ``ROOT/{train,val}/images/NAME.*`` and ``ROOT/{train,val}/masks/NAME.png``
  (a mask's pixel values are the class indices, 255 ignored), the classes named in
  ``ROOT/classes.txt`` (one per line) or numbered from the largest index found.

A user's mistake is one line (``DataError``): a missing pair, a mask of another size than its image,
a class index the task does not have. Samples are (image (3, H, W) float, normalised with the
backbone's mean and std; mask (H, W) long), both resized to the model's input size (the mask by
nearest neighbour, so class indices stay class indices).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .images import DataError, rgb_loader

IGNORE_INDEX = 255  # VOC's border and "difficult" pixels: no loss, no metric
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class SegmentationData:
    train: Dataset
    eval: Dataset
    classes: list[str]
    eval_split: str
    augment: str = "none"  # the image and its mask are only resized: nothing moves pixels apart from their labels
    augment_reason: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def read_mask(path: Path) -> np.ndarray:
    """Class indices (H, W) of a mask PNG: a palette image's indices as they are (VOC), a
    grayscale one's values; an RGB mask is refused (its colours are not indices)."""
    with Image.open(path) as img:
        if img.mode not in ("P", "L", "I", "I;16"):
            raise DataError(f"{path} is a {img.mode} image; a mask holds class indices (a palette or grayscale "
                            "PNG, 255 for pixels to ignore)")
        return np.array(img, dtype=np.int64)


def voc_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise DataError(f"{listing} not found: the VOC layout lists each split's images there")
    names = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    return [(root / "JPEGImages" / f"{name}.jpg", root / "SegmentationClass" / f"{name}.png") for name in names]


def folder_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    images, masks = root / split / "images", root / split / "masks"
    for folder in (images, masks):
        if not folder.is_dir():
            raise DataError(f"{folder} not found: a segmentation folder holds {split}/images and {split}/masks")
    found = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise DataError(f"no image in {images}")
    mask_names = {p.stem for p in masks.iterdir() if p.suffix.lower() == ".png"}
    alone = [p.name for p in found if p.stem not in mask_names]
    if alone:
        raise DataError(f"{images / alone[0]} has no mask {masks / (Path(alone[0]).stem + '.png')} "
                        f"({len(alone)} image(s) without one)")
    return [(p, masks / f"{p.stem}.png") for p in found]


def check_pairs(pairs: Sequence[tuple[Path, Path]], num_classes: Optional[int]) -> int:
    """Every pair exists, each mask has its image's size; returns the largest class index found
    (ignore aside), refused at or beyond ``num_classes`` when given."""
    largest = -1
    for image, mask in pairs:
        for path in (image, mask):
            if not path.is_file():
                raise DataError(f"{path} not found (its pair: {mask if path == image else image})")
        with Image.open(image) as img:
            size = img.size
        labels = read_mask(mask)
        if labels.shape != (size[1], size[0]):
            raise DataError(f"{mask} is {labels.shape[1]}x{labels.shape[0]}; its image {image.name} is "
                            f"{size[0]}x{size[1]}: a mask labels its image's pixels one for one")
        used = labels[labels != IGNORE_INDEX]
        if used.size:
            top = int(used.max())
            if num_classes is not None and top >= num_classes:
                raise DataError(f"{mask} holds class index {top}; the task has {num_classes} classes (0-"
                                f"{num_classes - 1}, {IGNORE_INDEX} ignored)")
            largest = max(largest, top)
    return largest


class SegmentationDataset(Dataset):
    """(image, mask) pairs resized to ``size`` (H, W), the image normalised."""

    def __init__(self, pairs: Sequence[tuple[Path, Path]], size: tuple[int, int], mean: Sequence[float],
                 std: Sequence[float]) -> None:
        self.pairs, self.size = list(pairs), size
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from .images import IMAGE_ERRORS

        image_path, mask_path = self.pairs[i]
        H, W = self.size
        try:  # a pair is checked before training, but a file can still be damaged inside
            mask = Image.fromarray(read_mask(mask_path).astype(np.uint8)).resize((W, H), Image.NEAREST)
            image = rgb_loader(image_path)
        except DataError:
            raise
        except IMAGE_ERRORS as e:
            raise DataError(f"cannot read {image_path} or its mask {mask_path.name}: {e}") from None
        return self.image(image), torch.from_numpy(np.asarray(mask, dtype=np.int64))

    def image(self, image: Image.Image) -> torch.Tensor:
        """An RGB image as the model reads it: resized to ``size``, normalised (predict uses it too)."""
        H, W = self.size
        x = torch.from_numpy(np.asarray(image.resize((W, H), Image.BILINEAR), dtype=np.float32) / 255.0)
        return (x.permute(2, 0, 1) - self.mean) / self.std


def load_segmentation_data(root: str | Path, size: tuple[int, int], mean: Sequence[float] = (0.485, 0.456, 0.406),
                           std: Sequence[float] = (0.229, 0.224, 0.225), train_samples: int = 0,
                           eval_samples: int = 0, seed: int = 0,
                           classes: Optional[Sequence[str]] = None) -> SegmentationData:
    """``seg:ROOT`` in either layout (VOC's when ``ROOT/JPEGImages`` exists), checked; with
    ``train_samples`` / ``eval_samples``, a subset of that many pairs drawn with ``seed`` (the
    classes found over all of them first). ``classes`` (a trained run's, for evaluation): the val
    split alone is read and checked against them."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    voc = (root / "JPEGImages").is_dir()
    given = list(classes) if classes is not None else None
    splits = {split: (voc_pairs if voc else folder_pairs)(root, split)
              for split in (("val",) if given is not None else ("train", "val"))}
    if given is not None:
        classes = given
    elif voc:
        classes = list(VOC_CLASSES)
    elif (root / "classes.txt").is_file():
        classes = [line.strip() for line in (root / "classes.txt").read_text().splitlines() if line.strip()]
    else:
        classes = None
    largest = max(check_pairs(pairs, None if classes is None else len(classes)) for pairs in splits.values())
    if classes is None:
        classes = [str(i) for i in range(largest + 1)]
    splits.setdefault("train", [])
    for split, n in (("train", train_samples), ("val", eval_samples)):
        if n and n < len(splits[split]):  # a class-balanced draw has no meaning for masks: a uniform one
            picked = torch.randperm(len(splits[split]), generator=torch.Generator().manual_seed(seed))[:n]
            splits[split] = [splits[split][i] for i in sorted(picked.tolist())]
    if len(classes) < 2:
        raise DataError(f"the masks under {root} hold {len(classes)} class; segmentation needs two or more")
    return SegmentationData(SegmentationDataset(splits["train"], size, mean, std),
                            SegmentationDataset(splits["val"], size, mean, std), classes, "val",
                            augment_reason="segmentation: image and mask resized together, no augmentation")
