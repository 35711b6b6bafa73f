"""The segmentation head and metrics (training/segmentation.py) against independent computations."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_adapters, tiny_vit

import sparse_tuning as st
from sparse_tuning.training.segmentation import (SegmentationModel, confusion_matrix, segmentation_loss,
                                                 segmentation_metrics)


def test_metrics_by_hand():
    """3 classes, 8 pixels (two ignored): IoU per class counted on paper."""
    truth = torch.tensor([[0, 0, 1, 1], [2, 255, 255, 1]])
    predicted = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    confusion = confusion_matrix(predicted, truth, 3)
    assert confusion.tolist() == [[1, 1, 0], [1, 2, 0], [0, 0, 1]]
    m = segmentation_metrics(confusion)
    # class 0: hit 1, union 2 + 2 - 1 = 3; class 1: hit 2, union 3 + 3 - 2 = 4; class 2: 1 / 1
    assert m["iou"] == pytest.approx([100 / 3, 50.0, 100.0])
    assert m["miou"] == pytest.approx((100 / 3 + 150) / 3) and m["pixel_accuracy"] == pytest.approx(400 / 6)
    absent = segmentation_metrics(confusion_matrix(torch.tensor([0, 0]), torch.tensor([0, 0]), 3))
    assert absent["iou"] == [100.0, None, None] and absent["miou"] == 100.0  # absent classes are not zeros


def test_the_metrics_agree_with_scikit_learn():
    from sklearn.metrics import confusion_matrix as sk_confusion, jaccard_score

    rng = np.random.default_rng(0)
    truth, predicted = rng.integers(0, 5, 400), rng.integers(0, 5, 400)
    truth[::7] = 255
    keep = truth != 255
    ours = confusion_matrix(torch.from_numpy(predicted), torch.from_numpy(truth), 5)
    assert ours.tolist() == sk_confusion(truth[keep], predicted[keep], labels=range(5)).tolist()
    assert segmentation_metrics(ours)["iou"] == pytest.approx(
        list(100 * jaccard_score(truth[keep], predicted[keep], labels=range(5), average=None)))


def test_the_loss_leaves_ignored_pixels_out():
    logits = torch.randn(2, 3, 4, 4)
    masks = torch.randint(0, 3, (2, 4, 4))
    masks[0, 0] = 255
    keep = masks != 255
    by_hand = -F.log_softmax(logits, 1).gather(1, masks.clamp(max=2).unsqueeze(1)).squeeze(1)[keep].mean()
    assert segmentation_loss(logits, masks).item() == pytest.approx(by_hand.item(), rel=1e-6)


@pytest.mark.parametrize("config", [None, st.SparseTuningConfig(keep_rate=1.0), st.SparseTuningConfig(keep_rate=0.5)])
def test_the_head_reads_the_restored_normalised_last_block(images, config):
    """The logits are the linear head on the final-norm'd last-block patch tokens, upsampled: the
    plain ViT's tokens, or a patched model's restored ones (equal to timm's at keep rate 1, tested
    in test_features.py)."""
    backbone = tiny_vit()
    if config is not None:
        st.apply(backbone, config)
        randomize_adapters(backbone)
    model = SegmentationModel(backbone, num_classes=4).eval()
    with torch.no_grad():
        logits = model(images)
        _, (tokens,) = backbone.forward_intermediates(images, indices=[11], output_fmt="NLC", norm=True)
        grid = tokens.reshape(2, 8, 8, 64).permute(0, 3, 1, 2)
        expected = F.interpolate(model.head(grid), size=(32, 32), mode="bilinear", align_corners=False)
    assert logits.shape == (2, 4, 32, 32) and torch.allclose(logits, expected, atol=1e-6)
