"""Every ViT family the library serves, tiny; and the ones it refuses, with the reason."""
import pytest
import torch
import torch.nn as nn
from conftest import randomize_adapters, tiny_vit
from timm.models.deit import VisionTransformerDistilled

import sparse_tuning as st

FAMILIES = {
    "vit": lambda: tiny_vit(),
    "deit-distilled": lambda: (torch.manual_seed(0), VisionTransformerDistilled(
        img_size=32, patch_size=4, embed_dim=64, depth=12, num_heads=4, num_classes=10).eval())[1],
    "clip-pre-norm": lambda: tiny_vit(pre_norm=True, norm_layer=None),
    "dinov2-registers-layerscale": lambda: tiny_vit(reg_tokens=4, init_values=1e-1, no_embed_class=True),
    "qk-norm": lambda: tiny_vit(qk_norm=True),
    "avg-pool": lambda: tiny_vit(global_pool="avg"),
    "vit-small-depth": lambda: tiny_vit(depth=6),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_family(family, images):
    plain = FAMILIES[family]()
    prefix = plain.num_prefix_tokens
    expected = plain(images)
    model = st.apply(FAMILIES[family](), st.SparseTuningConfig(keep_rate=1.0))
    assert torch.allclose(model(images), expected, atol=1e-5), "keep rate 1 must equal plain timm"

    model.sparse_tuning.keep_rate = 0.7
    randomize_adapters(model)
    out_fused = model(images)
    kept_fused = st.kept_tokens(model)
    assert out_fused.shape == expected.shape
    first = kept_fused[0]
    assert first.shape == (2, 45) and first.min() >= 0 and first.max() < 64  # patches only, no prefix
    assert model.sparse_tuning.last_tokens[model.sparse_tuning.sparsify_at[0]] == (prefix + 64, prefix + 46)
    model.sparse_tuning.fused_attn = False
    assert torch.allclose(model(images), out_fused, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(kept_fused, st.kept_tokens(model)))


def test_distilled_heads_both_train():
    model = st.apply(FAMILIES["deit-distilled"]())
    names = {n for n, _ in st.trainable_named_parameters(model)}
    assert {"head.weight", "head_dist.weight"} <= names


def test_depth_scaling_of_positions():
    assert st.apply(tiny_vit(depth=6)).sparse_tuning.sparsify_at == (1, 3, 4)
    assert st.apply(tiny_vit(depth=24)).sparse_tuning.sparsify_at == (6, 12, 18)
    assert st.apply(tiny_vit()).sparse_tuning.sparsify_at == (3, 6, 9)


def test_other_input_size_with_dynamic_img_size():
    model = st.apply(tiny_vit(dynamic_img_size=True))
    model(torch.randn(1, 3, 48, 48))
    assert st.kept_tokens(model)[0].shape == (1, 101)  # ceil(0.7 * 144)
    assert st.kept_tokens(model)[0].max() < 144


@pytest.mark.parametrize("make,reason", [
    (lambda: tiny_vit(class_token=False, global_pool="avg"), "no class token"),
    (lambda: tiny_vit(class_token=False, global_pool="map"), "no class token"),
    (lambda: tiny_vit(global_pool="map"), "attention-pool"),
    (lambda: nn.Sequential(nn.Linear(4, 4)), "not a timm VisionTransformer"),
    (lambda: tiny_vit(patch_drop_rate=0.5), "patch dropout"),
    (lambda: st.apply(tiny_vit()), "already applied"),
])
def test_unsupported_models_are_refused_with_the_reason(make, reason):
    model = make()
    with pytest.raises(ValueError, match=reason):
        st.apply(model)
