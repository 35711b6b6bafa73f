"""The data options of a run and the names they take (torch-free: the command line lists them cheaply)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from ..errors import UserError
from ..text import count

IMAGE_KINDS = ("folder", "vtab", "cifar100", "svhn", "food101", "mnist", "fashionmnist", "torchvision")
VIDEO_KINDS = ("kinetics", "ssv2", "frames", "videolist")
DENSE_KINDS = ("seg",)  # images with a mask each: --task segment
AUGMENTS = ("auto", "none", "crop-flip", "crop")

# --augment auto, for a new run: augmentation only pays on a complete dataset trained for many
# epochs. On 1,000 images over 5 epochs crops and flips cost Sparse-Tuning 5.8 points on
# Fashion-MNIST (benchmarks/suite/defaults.json; the suite measures it on four tasks), and the
# paper's VTAB-1K recipe uses none; its complete-dataset recipe (100 epochs on CIFAR-100 and the
# like) uses crop and flip. The bounds are where those two recipes part, not a measured crossover.
AUTO_AUGMENT_MIN_IMAGES = 10_000   # more training images than this ...
AUTO_AUGMENT_MIN_EPOCHS = 10       # ... and at least this many epochs: crop (and flip); else none
# Data whose label a horizontal flip can change (digits, letters): auto crops but never flips them.
FLIP_CHANGES_LABEL = {"mnist", "svhn", "torchvision:MNIST", "torchvision:EMNIST", "torchvision:KMNIST",
                      "torchvision:QMNIST", "torchvision:SVHN", "torchvision:USPS", "torchvision:Omniglot",
                      "torchvision:SEMEION"}


def choose_augment(kind: str, name: str, train_images: int, epochs: int) -> tuple[str, str]:
    """--augment auto for a new run: (augment, why), from the data and the length of the run."""
    if kind == "vtab":
        return "none", "auto: vtab: data, the VTAB-1K protocol"
    if train_images <= AUTO_AUGMENT_MIN_IMAGES:
        return "none", f"auto: {count(train_images, 'training image')}; crops pay above {AUTO_AUGMENT_MIN_IMAGES:,}"
    if epochs < AUTO_AUGMENT_MIN_EPOCHS:
        return "none", f"auto: {count(epochs, 'epoch')}; crops pay from {AUTO_AUGMENT_MIN_EPOCHS}"
    if kind in FLIP_CHANGES_LABEL or f"{kind}:{name}" in FLIP_CHANGES_LABEL:
        return "crop", f"auto: {count(train_images, 'image')} for {count(epochs, 'epoch')}; no flip: it changes a digit's label"
    return "crop-flip", f"auto: {count(train_images, 'image')} for {count(epochs, 'epoch')}"


@dataclass
class VideoConfig:
    frames: int = 0                 # frames per clip; 0 for image data
    video_tokens: Literal["joint", "frames"] = "joint"  # joint: spatio-temporal tokens; frames: each frame alone
    tubelet: int = 2                # frames per token in the joint layout
    sampling_rate: int = 4          # dense sampling (Kinetics): every n-th frame
    test_clips: int = 0             # temporal test views; 0: the dataset's default (K400 5, SSv2 2)
    test_crops: int = 0             # spatial test views; 0: the dataset's default (3)
    flip: Literal["auto", "on", "off"] = "auto"  # training flip: auto (off for SSv2), on, off

    def __post_init__(self) -> None:
        if self.video_tokens not in ("joint", "frames"):
            raise UserError(f"video_tokens={self.video_tokens!r}: expected joint or frames")
        if self.flip not in ("auto", "on", "off"):
            raise UserError(f"flip={self.flip!r}: expected auto, on or off")
        if self.frames < 0 or self.tubelet < 1 or self.sampling_rate < 1:
            raise UserError("frames must be >= 0, tubelet and sampling_rate >= 1")
        if self.test_clips < 0 or self.test_crops < 0:
            raise UserError("test_clips and test_crops must be >= 0 (0: the dataset's default)")

    def plan(self, kind: str, size: int):
        """The clip sampling for a dataset kind and input size, the field's defaults filled in:
        K400 dense sampling, 5 x 3 test views; SSv2 segments, 2 x 3 views, no flip."""
        from .video import ClipPlan

        ssv2 = kind == "ssv2"
        return ClipPlan(frames=self.frames, sampling="segment" if ssv2 else "dense", rate=self.sampling_rate,
                        test_clips=self.test_clips or (2 if ssv2 else 5), test_crops=self.test_crops or 3,
                        flip=(not ssv2) if self.flip == "auto" else self.flip == "on", size=size)


def absolute_spec(spec: str) -> str:
    """The data spec with its paths made absolute, so that a run folder's config.json still
    finds the data from another working directory (resume, eval)."""
    import os

    absolute = lambda p: os.path.abspath(os.path.expanduser(p)) if p else p
    kind, sep, rest = spec.partition(":")
    if not sep:
        return spec
    if kind == "torchvision":
        name, sep2, root = rest.partition(":")
        return f"torchvision:{name}{sep2}{absolute(root)}"
    if kind == "videolist":
        return "videolist:" + ",".join(absolute(p) for p in rest.split(","))
    return f"{kind}:{absolute(rest)}"
