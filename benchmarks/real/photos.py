"""Real photos and a real video that ship with packages on these machines (no download):
matplotlib's sample data, scikit-image's data and Debian's opencv-doc examples."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

OPENCV = Path("/usr/share/doc/opencv-doc/examples/data")


def _matplotlib(name: str) -> Path:
    import matplotlib.cbook

    return Path(matplotlib.cbook.get_sample_data(name, asfileobj=False))


def _skimage(name: str) -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data" / name


# name: (where it comes from, file); one object or scene each, of several kinds.
PHOTOS = {
    "grace_hopper": (_matplotlib, "grace_hopper.jpg"),
    "chelsea": (_skimage, "chelsea.png"),
    "coffee": (_skimage, "coffee.png"),
    "rocket": (_skimage, "rocket.jpg"),
    "astronaut": (_skimage, "astronaut.png"),
    "butterfly": (lambda n: OPENCV / n, "butterfly.jpg"),
    "squirrel": (lambda n: OPENCV / n, "squirrel_cls.jpg"),
    "orange": (lambda n: OPENCV / n, "orange.jpg"),
}
VIDEO = OPENCV / "vtest.avi"  # 795 frames of pedestrians, 768x576


def path(name: str) -> Path:
    where, file = PHOTOS[name]
    p = where(file)
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found (matplotlib, pip scikit-image, apt opencv-doc provide the photos)")
    return p


def load_square(file: str | Path, size: int) -> np.ndarray:
    """(size, size, 3) uint8: the shorter side resized to size (bicubic), then the centre crop."""
    img = Image.open(file).convert("RGB")
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def video_frames(count: int, stride: int, size: int, start: int = 0) -> np.ndarray:
    """(count, size, size, 3) uint8 frames of vtest.avi (every stride-th from start), squared."""
    import av

    frames = []
    with av.open(str(VIDEO)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i >= start and (i - start) % stride == 0:
                img = frame.to_image()
                w, h = img.size
                side = min(w, h)
                img = img.crop(((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2))
                frames.append(np.asarray(img.resize((size, size), Image.BICUBIC)))
            if len(frames) == count:
                break
    return np.stack(frames)
