"""Segmentation data on disk (data/segmentation.py): both layouts, written here in their real
formats (VOC's palette PNGs), and every user's mistake in one line."""
import numpy as np
import pytest
import torch
from PIL import Image

from sparse_tuning.data.segmentation import IGNORE_INDEX, VOC_CLASSES, load_segmentation_data


def _palette_mask(labels: np.ndarray) -> Image.Image:
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    img.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)])
    return img


def make_voc(root, names=("a", "b", "c"), size=(20, 16)):
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{name}.jpg")
        labels = np.zeros((size[1], size[0]), dtype=np.int64)
        labels[:, : size[0] // 2] = 15 if i % 2 else 12       # person or dog on the left
        labels[:4] = IGNORE_INDEX                              # a border to ignore
        _palette_mask(labels).save(root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(names[:-1]) + "\n")
    (root / "ImageSets/Segmentation/val.txt").write_text(names[-1] + "\n")
    return root


def make_pairs(root, classes=3, per_split=2, size=(12, 12)):
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(per_split):
            Image.new("RGB", size, (40 * i, 80, 120)).save(root / split / "images" / f"{i}.png")
            labels = np.full((size[1], size[0]), i % classes, dtype=np.uint8)
            labels[-1, -1] = classes - 1
            Image.fromarray(labels, mode="L").save(root / split / "masks" / f"{i}.png")
    return root


def test_the_voc_layout_reads_palette_indices_and_keeps_the_ignored_border(tmp_path):
    data = load_segmentation_data(make_voc(tmp_path / "voc"), (8, 10))
    assert data.classes == list(VOC_CLASSES) and data.num_classes == 21
    assert len(data.train) == 2 and len(data.eval) == 1
    image, mask = data.train[1]
    assert image.shape == (3, 8, 10) and image.dtype == torch.float32
    assert mask.shape == (8, 10) and mask.dtype == torch.int64
    assert set(mask.unique().tolist()) == {0, 15, IGNORE_INDEX}  # indices, not palette colours
    assert (mask[0] == IGNORE_INDEX).all() and (mask[3:, :4] == 15).all() and (mask[3:, 6:] == 0).all()


def test_a_folder_pair_numbers_its_classes_or_reads_classes_txt(tmp_path):
    root = make_pairs(tmp_path / "seg", classes=3)
    data = load_segmentation_data(root, (12, 12))
    assert data.classes == ["0", "1", "2"] and len(data.train) == 2
    written = np.array(Image.open(root / "val/masks/1.png"), dtype=np.int64)
    assert torch.equal(data.eval[1][1], torch.from_numpy(written))
    (root / "classes.txt").write_text("sky\nroad\ncar\ntree\n")
    assert load_segmentation_data(root, (12, 12)).classes == ["sky", "road", "car", "tree"]


@pytest.mark.parametrize("mistake,message", [
    ("no mask", "has no mask"),
    ("wrong size", "is 5x5; its image 0.png is 12x12"),
    ("unknown class", "holds class index 7; the task has 3 classes"),
    ("rgb mask", "is a RGB image; a mask holds class indices"),
    ("no split", "not found: a segmentation folder holds val/images and val/masks"),
])
def test_each_mistake_is_one_line(tmp_path, mistake, message):
    from sparse_tuning.errors import UserError

    root = make_pairs(tmp_path / "seg", classes=3)
    (root / "classes.txt").write_text("a\nb\nc\n")
    mask = root / "train" / "masks" / "0.png"
    if mistake == "no mask":
        mask.unlink()
    elif mistake == "wrong size":
        Image.new("L", (5, 5)).save(mask)
    elif mistake == "unknown class":
        Image.new("L", (12, 12), 7).save(mask)
    elif mistake == "rgb mask":
        Image.new("RGB", (12, 12)).save(mask)
    else:
        import shutil

        shutil.rmtree(root / "val")
    with pytest.raises(UserError, match=message) as error:
        load_segmentation_data(root, (12, 12))
    assert "\n" not in str(error.value)


def test_a_voc_list_naming_a_missing_image_is_one_line(tmp_path):
    from sparse_tuning.errors import UserError

    root = make_voc(tmp_path / "voc")
    (root / "JPEGImages" / "b.jpg").unlink()
    with pytest.raises(UserError, match=r"b.jpg not found \(its pair: .*b.png\)"):
        load_segmentation_data(root, (8, 8))
