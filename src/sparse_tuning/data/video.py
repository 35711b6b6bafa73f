"""Video datasets: list files of videos (decoded with PyAV, seeking to the frames needed) or of
frame folders, with the field's two samplings and multi-view testing.

    kinetics:ROOT          ROOT/train.csv and ROOT/val.csv (or .txt): '<video> <label>' per line
    ssv2:ROOT              the same layout; segment sampling, no flip
    frames:ROOT            the same layout, each entry a folder of extracted frames
    videolist:TRAIN[,EVAL] list files given directly (EVAL defaults to TRAIN)

Lines are 'path label', split at the last space or comma (the VideoMAE/AdaptFormer layout); a
relative path is read from the list file's folder.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from .images import DataError, ImageData, SafeDataset, rgb_loader

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class TooShortError(DataError):
    """A video with fewer frames than a clip needs (skipped and counted like unreadable ones)."""


@dataclass
class ClipPlan:
    """How clips are drawn from a video: made by ``VideoConfig.plan`` from the run's options."""

    frames: int = 8                    # frames per clip
    sampling: str = "dense"            # dense (Kinetics: consecutive frames, every `rate`) or segment (SSv2)
    rate: int = 4                      # dense sampling: take every rate-th frame
    test_clips: int = 5                # temporal views per test video
    test_crops: int = 3                # spatial views per test clip
    flip: bool = True                  # random horizontal flip in training (off for SSv2)
    size: int = 224                    # the model's input size


def read_list(path: Path) -> list[tuple[Path, int]]:
    if not path.is_file():
        raise DataError(f"video list {path} not found")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        cut = max(line.rfind(" "), line.rfind(","))
        name, label = line[:cut].strip(), line[cut + 1:].strip()
        if cut < 0 or not label.lstrip("-").isdigit() or int(label) < 0:
            raise DataError(f"{path}:{n}: expected '<video path> <label>' with a label >= 0, got {line!r}")
        p = Path(name)
        out.append((p if p.is_absolute() else path.parent / p, int(label)))
    if not out:
        raise DataError(f"{path} lists no videos")
    return out


def _find(root: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root} has none of {', '.join(names)}")


def video_lists(kind: str, path: str) -> tuple[Path, Path]:
    if kind == "videolist":
        train, _, ev = path.partition(",")
        return Path(train), Path(ev or train)
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{kind} root {root} not found")
    return _find(root, ("train.csv", "train.txt")), _find(root, ("val.csv", "val.txt", "test.csv", "test.txt"))


# --- reading frames -----------------------------------------------------------------------------

def frame_count(path: Path) -> int:
    if path.is_dir():
        return sum(1 for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    import av

    with av.open(str(path)) as container:
        stream = _video_stream(container, path)
        if stream.frames:
            return stream.frames
        return sum(1 for _ in container.decode(stream))  # containers that do not store the count


def _video_stream(container, path: Path):
    """The first video stream; a file without one (audio only) is an unreadable sample."""
    if not container.streams.video:
        raise TooShortError(f"{path} has no video stream")
    return container.streams.video[0]


def read_frames(path: Path, indices: list[int]) -> np.ndarray:
    """(T, H, W, 3) uint8 frames at `indices` (sorted or not, repeats allowed)."""
    wanted = sorted(set(indices))
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        got = {i: np.asarray(rgb_loader(files[i])) for i in wanted}
    else:
        got = _decode(path, wanted)
    missing = [i for i in wanted if i not in got]
    if missing:
        raise TooShortError(f"{path}: frames {missing[:3]} could not be decoded")
    return np.stack([got[i] for i in indices])


def _decode(path: Path, wanted: list[int]) -> dict[int, np.ndarray]:
    """Seek to the key frame before the first wanted frame, decode up to the last one."""
    import av

    got: dict[int, np.ndarray] = {}
    with av.open(str(path)) as container:
        stream = _video_stream(container, path)
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        tb = float(stream.time_base)
        start = stream.start_time or 0
        first = wanted[0]
        if first > 0:
            container.seek(int(start + first / rate / tb), stream=stream, backward=True, any_frame=False)
        want, last = set(wanted), wanted[-1]
        for frame in container.decode(stream):
            index = round(((frame.pts or 0) - start) * tb * rate)
            if index in want:
                got[index] = frame.to_ndarray(format="rgb24")
            if index >= last:
                break
    return got


# --- sampling ---------------------------------------------------------------------------------------

def sample_indices(total: int, opts: ClipPlan, clip: Optional[int] = None, clips: int = 1) -> list[int]:
    """Frame indices of one clip: random when `clip` is None (training), else test view `clip` of `clips`."""
    T = opts.frames
    if total < T:
        raise TooShortError(f"{total} frames, fewer than the {T} a clip needs")
    if opts.sampling == "segment":
        seg = total / T
        if clip is None:
            return [min(total - 1, int(i * seg + random.random() * seg)) for i in range(T)]
        return [min(total - 1, int(i * seg + (clip + 0.5) / clips * seg)) for i in range(T)]
    span = (T - 1) * opts.rate + 1
    if span > total:  # not enough frames at this rate: spread the clip over the whole video
        return [round(i * (total - 1) / max(T - 1, 1)) for i in range(T)]
    room = total - span
    start = random.randint(0, room) if clip is None else (room // 2 if clips == 1 else round(clip * room / (clips - 1)))
    return [start + i * opts.rate for i in range(T)]


class VideoDataset(Dataset):
    """Training items: (clip (C, T, H, W), label). Test items: (views (V, C, T, H, W), label),
    V = test_clips x test_crops, whose logits the model averages."""

    def __init__(self, samples: list[tuple[Path, int]], opts: ClipPlan, train: bool,
                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)) -> None:
        self.samples, self.opts, self.train = samples, opts, train
        self.targets = [label for _, label in samples]
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def _normalise(self, frames: torch.Tensor) -> torch.Tensor:
        """(T, 3, H, W) float in [0, 1] -> normalised (3, T, H, W)."""
        return ((frames - self.mean) / self.std).transpose(0, 1)

    def __getitem__(self, i: int):
        from torchvision.transforms import v2

        path, label = self.samples[i]
        total = frame_count(path)
        o = self.opts
        if self.train:
            frames = torch.from_numpy(read_frames(path, sample_indices(total, o))).permute(0, 3, 1, 2).float() / 255
            # One crop and one flip for the whole clip: torchvision's v2 transforms treat the
            # leading time dimension as a batch of the same image geometry.
            tf = [v2.RandomResizedCrop(o.size, scale=(0.25, 1.0), antialias=True)]
            if o.flip:
                tf.append(v2.RandomHorizontalFlip())
            return self._normalise(v2.Compose(tf)(frames)), label
        views = []
        for c in range(o.test_clips):
            frames = torch.from_numpy(read_frames(path, sample_indices(total, o, c, o.test_clips)))
            frames = v2.Resize(o.size, antialias=True)(frames.permute(0, 3, 1, 2).float() / 255)
            views += [self._normalise(crop) for crop in spatial_crops(frames, o.size, o.test_crops)]
        return torch.stack(views), label


def spatial_crops(frames: torch.Tensor, size: int, n: int) -> list[torch.Tensor]:
    """n square crops spread along the long side (1: centre; 3: both ends and the centre)."""
    T, C, H, W = frames.shape
    long = max(H, W) - size
    starts = [long // 2] if n == 1 else [round(k * long / (n - 1)) for k in range(n)]
    if W >= H:
        top = (H - size) // 2
        return [frames[:, :, top:top + size, s:s + size] for s in starts]
    left = (W - size) // 2
    return [frames[:, :, s:s + size, left:left + size] for s in starts]


def load_video_data(kind: str, path: str, opts: ClipPlan, strict: bool = False, mean=(0.485, 0.456, 0.406),
                    std=(0.229, 0.224, 0.225)) -> ImageData:
    """Video datasets of a kind; frames are normalised with the backbone's mean and std."""
    train_list, eval_list = video_lists(kind, path)
    train, ev = read_list(train_list), read_list(eval_list)
    missing = [str(p) for p, _ in train + ev if not p.exists()]
    if missing:
        raise DataError(f"the video lists name {len(missing)} missing file(s), e.g. {missing[:3]}")
    num_classes = 1 + max(label for _, label in train + ev)
    return ImageData(SafeDataset(VideoDataset(train, opts, True, mean, std), strict),
                     SafeDataset(VideoDataset(ev, opts, False, mean, std), strict),
                     num_classes, [str(i) for i in range(num_classes)], "val",
                     augment=f"the video recipe (a random clip and crop{', flipped at random' if opts.flip else ''})")
