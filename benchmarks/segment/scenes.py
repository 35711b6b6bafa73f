"""A segmentation set from real parts, offline: Fashion-MNIST articles pasted onto crops of real
photos, each pixel labelled with its article's class (10 classes) or background.

    python benchmarks/segment/scenes.py --out /tmp/seg-data

No public segmentation set is in the package registries; this one is built from what is:
  articles     Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist): 70,000
               28x28 grayscale clothing images; an article's mask is its own pixels (value > 24)
  backgrounds  the photos that scikit-image, matplotlib and opencv-doc ship (apt-get install
               opencv-doc): cats, people, rockets, fruit, buildings, textures

Each scene is SIZE x SIZE: a random crop of a photo (rescaled so the crop covers 40-100% of its
shorter side), then 1 to 3 articles, each scaled to 25-55% of the scene's side, shaded in a random
colour and pasted at a random place (opaque where the article reaches a quarter of its full
intensity, labelled where it is at least 40% opaque); a later article hides an earlier one.
The training scenes use the articles of Fashion-MNIST's train split and two thirds of the
photos; the test scenes use its t10k articles and the other photos, so no article and no
background of the test set is seen in training. Written in the plain layout
``seg:`` reads:

    OUT/train/images/NNNNN.png  OUT/train/masks/NNNNN.png   (mask pixels: 0 background, 1-10 the classes)
    OUT/val/images/...          OUT/val/masks/...           (the held-out test scenes)
    OUT/classes.txt
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "suite"))
from tasks import FASHION, fashion_mnist  # noqa: E402  (the suite's reader of the idx files)

CLASSES = ("background", "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
           "ankle-boot")
OPENCV = Path("/usr/share/doc/opencv-doc/examples/data")
OPENCV_PHOTOS = ("baboon.jpg", "fruits.jpg", "building.jpg", "home.jpg", "messi5.jpg", "orange.jpg", "apple.jpg",
                 "butterfly.jpg", "board.jpg", "aero1.jpg", "HappyFish.jpg", "leuvenA.jpg", "left01.jpg",
                 "starry_night.jpg", "lena.jpg", "graf1.png", "aloeL.jpg", "box_in_scene.png", "blox.jpg")
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "grass.png",
                  "gravel.png", "brick.png", "hubble_deep_field.jpg", "retina.jpg", "colorwheel.png", "immunohistochemistry.png")


def photos() -> list[Path]:
    """Every photo found on this machine, in a fixed order."""
    import matplotlib
    import skimage

    found = [Path(skimage.__file__).parent / "data" / name for name in SKIMAGE_PHOTOS]
    found.append(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    found += [OPENCV / name for name in OPENCV_PHOTOS]
    found = [p for p in found if p.is_file()]
    if len(found) < 9:
        raise SystemExit(f"only {len(found)} photos found; apt-get install opencv-doc adds the rest")
    return found


def crop(photo: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    h, w = photo.shape[:2]
    side = int(min(h, w) * rng.uniform(0.4, 1.0))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    return np.asarray(Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size), Image.BILINEAR))


def scene(photo: np.ndarray, articles: np.ndarray, labels: np.ndarray, size: int,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    image = crop(photo, size, rng).astype(np.float32)
    mask = np.zeros((size, size), dtype=np.uint8)
    for _ in range(rng.integers(1, 4)):
        i = rng.integers(len(articles))
        side = int(size * rng.uniform(0.25, 0.55))
        alpha = np.asarray(Image.fromarray(articles[i]).resize((side, side), Image.BILINEAR), dtype=np.float32) / 255
        y, x = rng.integers(0, size - side + 1, 2)
        shade = (0.3 + 0.7 * alpha[..., None]) * rng.uniform(40, 255, 3)  # its own shading, in a colour
        opacity = np.clip(alpha * 4, 0, 1)[..., None]  # opaque from a quarter of full intensity
        image[y:y + side, x:x + side] = opacity * shade + (1 - opacity) * image[y:y + side, x:x + side]
        mask[y:y + side, x:x + side][alpha > 0.1] = labels[i] + 1  # at least 40% opaque: the article's
    return image.clip(0, 255).astype(np.uint8), mask


def write(out: Path, split: str, n: int, photo_set: list[np.ndarray], articles: np.ndarray, labels: np.ndarray,
          size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    (out / split / "images").mkdir(parents=True, exist_ok=True)
    (out / split / "masks").mkdir(parents=True, exist_ok=True)
    for k in range(n):
        image, mask = scene(photo_set[rng.integers(len(photo_set))], articles, labels, size, rng)
        Image.fromarray(image).save(out / split / "images" / f"{k:05d}.png")
        Image.fromarray(mask, mode="L").save(out / split / "masks" / f"{k:05d}.png")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--train", type=int, default=2000, help="training scenes (default: %(default)s)")
    p.add_argument("--test", type=int, default=1000, help="held-out scenes (default: %(default)s)")
    p.add_argument("--size", type=int, default=168, help="scene side in pixels (default: %(default)s)")
    p.add_argument("--fashion", type=Path, default=FASHION, help="Fashion-MNIST's idx files")
    args = p.parse_args()
    images, labels = fashion_mnist(args.fashion)
    train_part = 60_000  # the first 60,000 are Fashion-MNIST's train split, the rest its t10k
    found = photos()
    loaded = [np.asarray(Image.open(path).convert("RGB")) for path in found]
    train_photos, test_photos = [p for i, p in enumerate(loaded) if i % 3], loaded[::3]
    write(args.out, "train", args.train, train_photos, images[:train_part], labels[:train_part], args.size, seed=0)
    write(args.out, "val", args.test, test_photos, images[train_part:], labels[train_part:], args.size, seed=1)
    (args.out / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    about = {"train": args.train, "test": args.test, "size": args.size, "classes": list(CLASSES),
             "train_photos": [found[i].name for i in range(len(found)) if i % 3],
             "test_photos": [p.name for p in found[::3]]}
    (args.out / "scenes.json").write_text(json.dumps(about, indent=1) + "\n")
    print(f"{args.train} training and {args.test} held-out scenes of {args.size}x{args.size} in {args.out} "
          f"({len(found)} photos)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
