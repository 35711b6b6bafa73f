import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

import sparse_tuning as st


def tiny_vit(**kw) -> VisionTransformer:
    """A 12-block ViT on 32x32 images, patch 4 (64 patches), width 64: the paper's layout, tiny."""
    args = dict(img_size=32, patch_size=4, embed_dim=64, depth=12, num_heads=4, num_classes=10)
    args.update(kw)
    torch.manual_seed(0)
    return VisionTransformer(**args).eval()


def randomize_adapters(model, std: float = 0.05, seed: int = 1) -> None:
    """Give every adapter non-zero weights, as after training (a fresh `up` is zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in st.trainable_named_parameters(model):
            if ".adapter." in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def nan_loss_at(monkeypatch, call: int):
    """Plant a NaN: the training loss's ``call``-th computation (one per training step; evaluation
    computes its own) returns NaN, the same every time. Returns the real forward, to restore it."""
    calls = {"n": 0}
    real_ce = torch.nn.CrossEntropyLoss.forward

    def poisoned(self, logits, target):
        calls["n"] += 1
        loss = real_ce(self, logits, target)
        return loss * float("nan") if calls["n"] == call else loss
    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", poisoned)
    return real_ce


@pytest.fixture
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


import sparse_tuning.hosts.timm_models  # noqa: E402,F401  (registers st_vit_micro_patch4_32 with timm for the tests)
