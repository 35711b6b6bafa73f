"""The patched timm ViT: equivalences with plain timm, hand-computed steps, wiring, gradients."""
import math

import pytest
import torch
from conftest import randomize_adapters, tiny_vit

import sparse_tuning as st
from sparse_tuning.core.sparsify import apply_step
from sparse_tuning.hosts import timm_vit


def test_keep_rate_1_equals_plain_timm(images):
    plain = tiny_vit()
    expected = plain(images)
    for fused in (True, False):
        model = st.apply(tiny_vit(), st.SparseTuningConfig(keep_rate=1.0))
        model.sparse_tuning.fused_attn = fused
        assert torch.allclose(model(images), expected, atol=1e-6)
        assert model.sparse_tuning.last_tokens == [(65, 65)] * 12


@pytest.mark.parametrize("merge", ["mean", "sum", "drop"])
def test_fused_and_eager_agree(images, merge):
    model = st.apply(tiny_vit(), st.SparseTuningConfig(merge=merge))
    randomize_adapters(model)
    out_fused = model(images)
    kept_fused = st.kept_tokens(model)
    model.sparse_tuning.fused_attn = False
    assert not model.sparse_tuning.fused_attn
    out_eager = model(images)
    assert torch.allclose(out_fused, out_eager, atol=1e-5)
    for a, b in zip(kept_fused, st.kept_tokens(model)):
        assert torch.equal(a, b)


def _attention_by_hand(blk, x):
    """A block's attention written out: returns (attention output, class-row scores)."""
    B, N, C = x.shape
    a = blk.attn
    H, D = a.num_heads, a.head_dim
    h = blk.norm1(x)
    q = (h @ a.qkv.weight[:C].T + a.qkv.bias[:C]).view(B, N, H, D).transpose(1, 2)
    k = (h @ a.qkv.weight[C:2 * C].T + a.qkv.bias[C:2 * C]).view(B, N, H, D).transpose(1, 2)
    v = (h @ a.qkv.weight[2 * C:].T + a.qkv.bias[2 * C:]).view(B, N, H, D).transpose(1, 2)
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(D), dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(B, N, C)
    return out @ a.proj.weight.T + a.proj.bias, weights[:, :, 0, :].mean(dim=1)


@pytest.mark.parametrize("merge", ["mean", "sum", "drop"])
def test_each_step_keeps_top_attended_and_merges_by_score(images, merge):
    """Kept indices = top-k of the class attention computed independently; the fused token is the
    score-weighted average (mean), weighted sum (sum) or absent (drop)."""
    model = st.apply(tiny_vit(), st.SparseTuningConfig(merge=merge))
    randomize_adapters(model)
    block_in, ffn_in = {}, {}
    for i in model.sparse_tuning.sparsify_at:
        blk = model.blocks[i]
        blk.register_forward_pre_hook(lambda m, args, i=i: block_in.__setitem__(i, args[0]))
        blk.norm2.register_forward_pre_hook(lambda m, args, i=i: ffn_in.__setitem__(i, args[0]))
    with torch.no_grad():
        model(images)
        for i in model.sparse_tuning.sparsify_at:
            x = block_in[i]
            attn_out, scores = _attention_by_hand(model.blocks[i], x)
            x = x + attn_out
            s = scores[:, 1:]
            M = s.shape[1]
            k = math.ceil(0.7 * M - 1e-9)
            order = s.argsort(dim=1, descending=True)
            kept, rest = order[:, :k].sort(dim=1).values, order[:, k:]
            tokens = x[:, 1:]
            expected = [x[:, :1], torch.stack([tokens[b, kept[b]] for b in range(2)])]
            if merge != "drop":
                w = torch.stack([s[b, rest[b]] for b in range(2)])
                merged = torch.stack([tokens[b, rest[b]] for b in range(2)])
                fused = (w.unsqueeze(-1) * merged).sum(1, keepdim=True)
                if merge == "mean":
                    fused = fused / w.sum(1).view(2, 1, 1)
                expected.append(fused)
            assert torch.allclose(ffn_in[i], torch.cat(expected, dim=1), atol=1e-5)


def test_paper_token_counts_on_vit_b_layout():
    """SPEC's table, on the ViT-B/16 geometry (196 patches), built on the meta device."""
    with torch.device("meta"):
        model = tiny_vit(img_size=224, patch_size=16, embed_dim=64)
    st.apply(model)
    model(torch.zeros(1, 3, 224, 224, device="meta"))
    assert model.sparse_tuning.last_tokens == (
        [(197, 197)] * 3 + [(197, 140)] + [(140, 140)] * 2 + [(140, 100)] + [(100, 100)] * 2
        + [(100, 72)] + [(72, 72)] * 2)
    assert [t.shape for t in st.kept_tokens(model)] == [(1, 138), (1, 98), (1, 70)]


def test_kept_tokens_are_grid_positions_and_fused_is_minus_one(images):
    model = st.apply(tiny_vit(), st.SparseTuningConfig(keep_rate=0.5))
    model(images)
    kept = st.kept_tokens(model)
    assert [k.shape for k in kept] == [(2, 32), (2, 17), (2, 9)]
    assert kept[0].min() >= 0 and kept[0].max() < 64
    for k in kept:  # a patch is kept at most once; positions of later steps come from earlier ones
        for row in k.tolist():
            real = [p for p in row if p >= 0]
            assert len(real) == len(set(real))
    for prev, cur in zip(kept, kept[1:]):
        for b in range(2):
            assert set(cur[b].tolist()) <= set(prev[b].tolist()) | {-1}
    model.sparse_tuning.keep_rate = 0.9
    model(images)
    assert [k.shape[1] for k in st.kept_tokens(model)] == [58, 54, 50]


def test_kept_tokens_needs_a_forward():
    model = st.apply(tiny_vit())
    with pytest.raises(RuntimeError, match="no forward"):
        st.kept_tokens(model)


def test_earlier_adapter_output_follows_the_sparsification(images):
    model = st.apply(tiny_vit())
    model.sparse_tuning.factored_history = False  # the reference formulation: outputs as tensors
    randomize_adapters(model)
    outputs, inputs = {}, {}
    for i, blk in enumerate(model.blocks):
        blk.adapter.register_forward_hook(lambda m, args, out, i=i: outputs.__setitem__(i, out))
        blk.adapter.register_forward_pre_hook(lambda m, args, i=i: inputs.__setitem__(i, args[0]))
    with torch.no_grad():
        model(images)
    steps = model.sparse_tuning.last_steps  # the steps the forward took, as it recorded them
    assert [len(inputs[i]) for i in range(12)] == [1, 2, 2] + [3] * 9
    # Block 4 reads a_3 (already on the sparse sequence) and a_1 (from before the step at block 3).
    x4, a3, a1 = inputs[4]
    assert torch.equal(a3, outputs[3])
    assert torch.allclose(a1, apply_step(outputs[1], steps[0], 1), atol=1e-6)
    # Block 7 reads a_4, which crossed the step at block 6 only.
    assert torch.allclose(inputs[7][2], apply_step(outputs[4], steps[1], 1), atol=1e-6)
    assert inputs[7][0].shape == inputs[7][2].shape


@pytest.mark.parametrize("merge,fusion", [
    ("mean", "down-sum"), ("sum", "down-sum"), ("drop", "down-sum"), ("mean", "input-sum"), ("sum", "up-sum"),
])
def test_factored_history_matches_the_reference_formulation(images, merge, fusion):
    """Earlier adapter outputs passed on factored give the same logits, kept tokens and gradients."""
    def run(factored):
        model = st.apply(tiny_vit(), st.SparseTuningConfig(merge=merge, fusion=fusion, keep_rate=0.5))
        randomize_adapters(model, std=0.2)
        model.sparse_tuning.factored_history = factored
        model.train()
        out = model(images)
        (out ** 2).sum().backward()
        return out, st.kept_tokens(model), {n: p.grad for n, p in st.trainable_named_parameters(model)}
    out_f, kept_f, grads_f = run(True)
    out_r, kept_r, grads_r = run(False)
    assert torch.allclose(out_f, out_r, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(kept_f, kept_r))
    assert grads_f.keys() == grads_r.keys()
    for name in grads_f:
        assert torch.allclose(grads_f[name], grads_r[name], atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("dense_inputs,downs", [
    ((1, 3), [1, 2, 2] + [3] * 9), ((), [1] * 12), ((1,), [1] + [2] * 11), ((2, 4), [1, 1, 2, 2] + [3] * 8),
])
def test_dense_inputs_wiring(dense_inputs, downs, images):
    model = st.apply(tiny_vit(), st.SparseTuningConfig(dense_inputs=dense_inputs))
    assert [len(blk.adapter.down) for blk in model.blocks] == downs
    randomize_adapters(model)
    model(images)


@pytest.mark.parametrize("fusion", ["down-sum", "input-sum", "up-sum"])
def test_fusion_variants_run_and_start_as_identity(fusion, images):
    expected = tiny_vit()(images)
    model = st.apply(tiny_vit(), st.SparseTuningConfig(fusion=fusion, keep_rate=1.0))
    assert torch.allclose(model(images), expected, atol=1e-6)
    assert all(blk.adapter.fusion == fusion for blk in model.blocks)


def test_adapter_parameter_count_vit_b():
    """SPEC: 1,091,584 adapter parameters for ViT-B at b = 32."""
    with torch.device("meta"):
        model = tiny_vit(img_size=224, patch_size=16, embed_dim=768, num_heads=12, num_classes=100)
    st.apply(model)
    adapters = sum(p.numel() for n, p in st.trainable_named_parameters(model) if ".adapter." in n)
    assert adapters == 1_091_584
    assert st.count_params(model)[1] == 1_091_584 + 768 * 100 + 100


def test_ts_only_has_no_adapters(images):
    model = st.apply(tiny_vit(), st.SparseTuningConfig(adapters=False))
    assert all(blk.adapter is None for blk in model.blocks)
    assert {n for n, _ in st.trainable_named_parameters(model)} == {"head.weight", "head.bias"}
    model(images)


def test_only_adapters_and_head_get_gradients(images):
    model = st.apply(tiny_vit())
    model.train()
    model(images).sum().backward()
    trainable = {n for n, _ in st.trainable_named_parameters(model)}
    for name, p in model.named_parameters():
        if name in trainable:
            assert p.requires_grad and p.grad is not None, name
        else:
            assert not p.requires_grad and p.grad is None, name
    # A fresh adapter (up = 0) passes gradient to its up-projection, block 0 included.
    for blk in model.blocks:
        assert blk.adapter.up.weight.grad.abs().sum() > 0
    # Once up is non-zero, every down-projection of every adapter gets gradient too.
    model.zero_grad()
    randomize_adapters(model)
    model(images).sum().backward()
    for blk in model.blocks:
        for down in blk.adapter.down:
            assert down.weight.grad.abs().sum() > 0


def test_backbone_keys_unchanged_and_timm_checkpoints_load():
    plain = tiny_vit()
    plain_sd = plain.state_dict()
    model = st.apply(tiny_vit(depth=12))
    keys = set(model.state_dict())
    assert set(plain_sd) <= keys
    assert all(".adapter." in k for k in keys - set(plain_sd))
    result = model.load_state_dict(plain_sd, strict=False)
    assert result.unexpected_keys == [] and all(".adapter." in k for k in result.missing_keys)


def test_grad_checkpointing_gives_same_output_and_gradients(images):
    def run(checkpointing):
        model = st.apply(tiny_vit())
        randomize_adapters(model)
        model.train()
        model.set_grad_checkpointing(checkpointing)
        out = model(images)
        out.sum().backward()
        return out, [p.grad for p in st.trainable_parameters(model)]
    out_a, grads_a = run(False)
    out_b, grads_b = run(True)
    assert torch.allclose(out_a, out_b, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads_a, grads_b))


def test_standalone_block_call_is_refused(images):
    model = st.apply(tiny_vit())
    with pytest.raises(RuntimeError, match="model.blocks"):
        model.blocks[0](torch.zeros(1, 65, 64))


def test_torch_export_with_dynamic_batch(images):
    """Token counts depend only on the input size, so the graph exports with a dynamic batch."""
    model = st.apply(tiny_vit())
    randomize_adapters(model)
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(model, (images,), dynamic_shapes=({0: batch},)).module()
    more = torch.randn(5, 3, 32, 32)
    assert torch.allclose(exported(images), model(images), atol=1e-6)
    assert torch.allclose(exported(more), model(more), atol=1e-6)


def test_a_patched_model_pickles_with_torch_save(tmp_path, images):
    """torch.save(model) of a patched model: its runtime class is rebuilt on loading."""
    model = st.apply(tiny_vit())
    randomize_adapters(model)
    with torch.no_grad():
        expected = model(images)
    torch.save(model, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    assert type(loaded) is type(model) and loaded.sparse_tuning.keep_rate == 0.7
    with torch.no_grad():
        assert torch.equal(loaded(images), expected)
    assert [k.tolist() for k in st.kept_tokens(loaded)] == [k.tolist() for k in st.kept_tokens(model)]
    loaded.set_grad_checkpointing()
    assert loaded.sparse_tuning.grad_checkpointing
