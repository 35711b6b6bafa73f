"""timm's feature API on a token-reduced ViT (hosts/timm_features.py): at keep rate 1 it is timm's
own forward_intermediates for every form of its arguments; reduced, every intermediate is the
block's output restored to the full grid, checked by a loop over patches."""
import pytest
import torch
from conftest import randomize_adapters, tiny_vit

import sparse_tuning as st
from sparse_tuning.methods import method_config, prepare

INDICES = [None, 3, [0, 5, 11], [-1, -4], (2,)]


def _equal(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.allclose(a, b, atol=1e-10, rtol=0)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("indices", INDICES)
@pytest.mark.parametrize("options", [dict(), dict(output_fmt="NLC"), dict(intermediates_only=True),
                                     dict(return_prefix_tokens=True, norm=True), dict(output_dict=True),
                                     dict(output_dict=True, return_prefix_tokens=True, intermediates_only=True),
                                     dict(stop_early=True)])
def test_at_keep_rate_1_it_is_timms_own(images, indices, options):
    """At keep rate 1 without adapters the patched model computes the plain ViT: its
    forward_intermediates equals timm's own on the plain model, for every form of the arguments."""
    plain = tiny_vit().double()
    ours = st.apply(tiny_vit().double(), st.SparseTuningConfig(keep_rate=1.0, adapters=False))
    x = images.double()
    with torch.no_grad():
        expected = plain.forward_intermediates(x, indices=indices, **options)
        got = ours.forward_intermediates(x, indices=indices, **options)
    assert _equal(got, expected)


def test_a_reduced_models_intermediates_are_its_block_outputs_restored(images):
    """Each patch position holds the output token its patch went to, by a loop over the recorded
    kept indices; the adapters' outputs are in it (it differs from the model without them); the
    shapes are the plain model's."""
    model = st.apply(tiny_vit().double(), st.SparseTuningConfig(keep_rate=0.5))
    randomize_adapters(model)
    outputs = {}
    for i, blk in enumerate(model.blocks):
        blk.register_forward_hook(lambda m, a, out, i=i: outputs.__setitem__(i, out[0]))
    x = images.double()
    with torch.no_grad():
        final, feats = model.forward_intermediates(x, indices=[2, 5, 8, 11], output_fmt="NLC")
    assert [f.shape for f in feats] == [(2, 64, 64)] * 4 and final.shape == (2, 65, 64)
    steps = dict(zip(model.blocks.st.sparsify_at, model.sparse_tuning.last_steps))
    for b in range(2):
        where = list(range(64))  # position of each patch among the current non-prefix tokens
        for block in range(12):
            if block in steps:
                keep = steps[block].keep_idx[b].tolist()
                where = [keep.index(w) if w in keep else len(keep) for w in where]  # fused: after the kept
            if block in (2, 5, 8, 11):
                f = feats[[2, 5, 8, 11].index(block)][b]
                for p in range(64):
                    assert torch.equal(f[p], outputs[block][b, 1 + where[p]]), (block, p)
    fresh = st.apply(tiny_vit().double(), st.SparseTuningConfig(keep_rate=0.5))  # adapters that add nothing yet
    with torch.no_grad():
        without = fresh.forward_intermediates(x, indices=[8], intermediates_only=True)[0]
        assert not torch.allclose(without, model.forward_intermediates(x, indices=[8], intermediates_only=True)[0])


@pytest.mark.parametrize("method,rule", [("lora", dict(reduction="tome", tome_r=(4,))),
                                         ("vpt", dict(reduction="class-attention", keep_rate=0.7)),
                                         ("adapter", None)])
def test_every_method_and_rule_gives_the_plain_shapes_through_timms_feature_wrapper(images, method, rule):
    """timm's features_only wrapper (FeatureGetterNet, what segmentation and detection necks take)
    on a reduced model: NCHW maps of the plain model's shapes."""
    from timm.models._features import FeatureGetterNet

    rule = dict(rule or {})  # a copy: the parameter is shared between runs
    keep = rule.pop("keep_rate", None)
    model = prepare(tiny_vit(), method, method_config(method, keep, **rule))
    net = FeatureGetterNet(model, out_indices=(3, 7, 11), output_fmt="NCHW")
    with torch.no_grad():
        maps = net(images)
    assert [m.shape for m in maps] == [(2, 64, 8, 8)] * 3


def test_attention_masks_are_refused_by_name(images):
    model = st.apply(tiny_vit(), st.SparseTuningConfig())
    with pytest.raises(ValueError, match="attention masks are not supported"):
        model.forward_intermediates(images, attn_mask=torch.zeros(65, 65))


def _same_reduced_models(tmp_path):
    """A transformers ViT and the timm ViT with its weights, both at keep rate 0.5 with the same
    random adapters (float64)."""
    from test_hf_host import hf_vit, timm_from_hf

    hf = hf_vit().double()
    vit = st.apply(timm_from_hf(hf), st.SparseTuningConfig(keep_rate=0.5))
    randomize_adapters(vit)
    st.save_adapters(vit, tmp_path / "a.safetensors")
    reduced = st.load_adapters(hf_vit().double(), tmp_path / "a.safetensors")
    return reduced, vit


def test_transformers_hidden_states_are_restored_as_timms_intermediates(images, tmp_path):
    """A reduced transformers ViT's output_hidden_states: the embeddings, then every layer's output
    restored to the full sequence; the same, token for token, as the timm model with the same
    weights and adapters gives from forward_intermediates; at keep rate 1 the plain model's."""
    from test_hf_host import hf_vit

    reduced, vit = _same_reduced_models(tmp_path)
    x = images.double()
    with torch.no_grad():
        hidden = reduced(pixel_values=x, output_hidden_states=True).hidden_states
        feats = vit.forward_intermediates(x, indices=list(range(12)), output_fmt="NLC", intermediates_only=True,
                                          return_prefix_tokens=True)
        plain = hf_vit().double()(pixel_values=x, output_hidden_states=True).hidden_states
        unreduced = st.apply(hf_vit().double(), st.SparseTuningConfig(keep_rate=1.0, adapters=False))
        same = unreduced(pixel_values=x, output_hidden_states=True).hidden_states
    assert len(hidden) == 13 and all(h.shape == (2, 65, 64) for h in hidden)
    for h, (patches, prefix) in zip(hidden[1:], feats):
        assert torch.allclose(h, torch.cat([prefix, patches], dim=1), atol=1e-10, rtol=0)
    assert all(torch.allclose(a, b, atol=1e-10, rtol=0) for a, b in zip(same, plain))


def test_transformers_block_maps_are_timms_with_the_same_weights(images, tmp_path):
    """The maps a segmentation head reads from a reduced transformers ViT equal the timm model's
    with the same weights and adapters (blocks counted from 0, the final norm applied)."""
    from sparse_tuning.hosts import host_for

    reduced, vit = _same_reduced_models(tmp_path)
    x = images.double()
    with torch.no_grad():
        ours = host_for(reduced).block_maps(reduced, x, (3, 11))
        theirs = host_for(vit).block_maps(vit, x, (3, 11))
    assert [m.shape for m in ours] == [(2, 64, 8, 8)] * 2
    assert all(torch.allclose(a, b, atol=1e-10, rtol=0) for a, b in zip(ours, theirs))
