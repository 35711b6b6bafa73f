"""Token reduction as its own axis on the timm host: ToMe against a reference ToMe ViT written
here, the random control, and the adapter history under every rule."""
import pytest
import torch
from conftest import randomize_adapters, tiny_vit
from test_merging import reference_tome

import sparse_tuning as st

REDUCTIONS = ["class-attention", "tome", "random", "none"]


def reference_tome_vit(vit, images, rs, proportional):
    """ToMe's ViT, step by step from its paper: per block attention (with log(size) added to the
    logits when proportional), then the merge of r tokens on the head-averaged keys, then the MLP.
    Returns the logits and the token sizes after each block."""
    P = vit.num_prefix_tokens
    x = vit.norm_pre(vit._pos_embed(vit.patch_embed(images)))
    size = torch.ones(x.shape[0], x.shape[1], 1, dtype=x.dtype)
    sizes = []
    for blk, r in zip(vit.blocks, rs):
        B, N, C = x.shape
        H = blk.attn.num_heads
        qkv = blk.attn.qkv(blk.norm1(x)).reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        logits = (q @ k.transpose(-2, -1)) * (C // H) ** -0.5
        if proportional:
            logits = logits + size.log()[:, None, None, :, 0]
        x = x + blk.attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(B, N, C))
        if r:
            x, size = reference_tome(x, size, k.mean(1), r, class_token=True, distill_token=P == 2)
        x = x + blk.mlp(blk.norm2(x))
        sizes.append(size[..., 0])
    return vit.forward_head(vit.norm(x)), sizes


@pytest.mark.parametrize("proportional", [True, False])
@pytest.mark.parametrize("reg_tokens", [0, 1])  # one prefix token, or two (ToMe's distillation-token layout)
@pytest.mark.parametrize("tome_r", [(6,), (8, 0, 4, 12, 3, 0, 9, 2, 5, 1, 7, 6)])
def test_tome_equals_the_reference_tome_vit(reg_tokens, proportional, tome_r):
    vit = tiny_vit(reg_tokens=reg_tokens, no_embed_class=bool(reg_tokens)).double()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rs = tome_r * 12 if len(tome_r) == 1 else tome_r
    with torch.no_grad():
        expected, sizes = reference_tome_vit(vit, images, rs, proportional)
    model = st.apply(vit, st.SparseTuningConfig(reduction="tome", tome_r=tome_r, adapters=False,
                                                proportional_attention=proportional))
    for fused in (True, False):
        model.sparse_tuning.fused_attn = fused
        with torch.no_grad():
            got = model(images)
        assert torch.allclose(got, expected, atol=1e-10, rtol=0)
    P = 1 + reg_tokens
    counts = [n_out for _, n_out in model.sparse_tuning.last_tokens]
    assert counts == [s.shape[1] for s in sizes]
    # the size of each token after every block, from which original patches it holds
    for where, size in zip(st.token_sources(model), sizes):
        held = torch.zeros_like(size).scatter_add_(1, where, torch.ones_like(where, dtype=size.dtype))
        held[:, :P] = 1
        assert torch.equal(held, size)


def test_tome_r_is_a_runtime_knob_and_checked_against_the_depth():
    model = st.apply(tiny_vit(), st.SparseTuningConfig(reduction="tome", tome_r=4, adapters=False))
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(images)
    assert model.sparse_tuning.last_tokens[-1][1] == 65 - 12 * 4
    model.sparse_tuning.config.tome_r = 2  # an int, as ToMe's model.r
    with torch.no_grad():
        model(images)
    assert model.sparse_tuning.last_tokens[-1][1] == 65 - 12 * 2
    with pytest.raises(ValueError, match="one number or 12"):
        st.apply(tiny_vit(), st.SparseTuningConfig(reduction="tome", tome_r=(1, 2, 3)))


def test_random_keeps_exactly_the_budget_and_is_reproducible_from_a_seed():
    model = st.apply(tiny_vit(), st.SparseTuningConfig(reduction="random", keep_rate=0.5))
    images = torch.randn(2, 3, 32, 32)

    def kept(seed):
        torch.manual_seed(seed)
        with torch.no_grad():
            model(images)
        return [k.tolist() for k in st.kept_tokens(model)]

    a, b, c = kept(0), kept(0), kept(1)
    assert a == b and a != c
    assert [len(k[0]) for k in a] == [32, 17, 9]  # ceil(0.5 M), M = 64, 33, 18: as class-attention
    ranked = st.apply(tiny_vit(), st.SparseTuningConfig(keep_rate=0.5))
    with torch.no_grad():
        ranked(images)
    assert ranked.sparse_tuning.last_tokens == model.sparse_tuning.last_tokens


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_factored_history_matches_the_reference_formulation_under_every_rule(images, reduction):
    """Earlier adapter outputs follow every rule's step (kept indices and merge weights, or
    ToMe's size-weighted merge): factored and direct give the same outputs and gradients."""
    def run(factored):
        model = st.apply(tiny_vit(), st.SparseTuningConfig(reduction=reduction, keep_rate=0.5, tome_r=4))
        randomize_adapters(model, std=0.2)
        model.sparse_tuning.factored_history = factored
        model.train()
        torch.manual_seed(0)  # the random rule draws the same tokens
        out = model(images)
        (out ** 2).sum().backward()
        return out, model.sparse_tuning.last_tokens, {n: p.grad for n, p in st.trainable_named_parameters(model)}

    out_f, tokens_f, grads_f = run(True)
    out_r, tokens_r, grads_r = run(False)
    assert tokens_f == tokens_r
    assert (tokens_f[-1][1] < 65) == (reduction != "none")
    assert torch.allclose(out_f, out_r, atol=1e-5)
    for name in grads_f:
        assert torch.allclose(grads_f[name], grads_r[name], atol=1e-5, rtol=1e-4), name


def test_unknown_reduction_is_refused():
    with pytest.raises(ValueError, match="reduction='bogus'"):
        st.SparseTuningConfig(reduction="bogus")
    with pytest.raises(ValueError, match="tome_r"):
        st.SparseTuningConfig(tome_r=(-1,))


PAIRS = [(m, r) for m in ("lora", "adaptformer", "adapter", "vpt", "linear", "full", "ts-only", "sparse-tuning")
         for r in ("class-attention", "tome", "random")]


@pytest.mark.parametrize("method,reduction", PAIRS)
def test_every_method_trains_under_every_rule_and_only_its_parameters_move(method, reduction):
    from sparse_tuning.methods import method_config, prepare

    rule = {"reduction": reduction, **({"tome_r": (3,)} if reduction == "tome" else {})}
    config = method_config(method, None if reduction == "tome" else 0.5, **rule)
    model = prepare(tiny_vit(), method, config)
    assert model.sparse_tuning.config.reduction == reduction
    declared = {n for n, p in model.named_parameters() if p.requires_grad}
    plain = {n for n, p in prepare(tiny_vit(), method).named_parameters() if p.requires_grad}
    assert declared == plain  # the same names: the reduction adds no parameter, frees none, renames none
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(2):
        x, y = torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= declared
    if method not in ("linear", "ts-only"):  # the method's own weights move, not only the head
        assert any(not n.startswith("head.") for n in changed)
    assert model.sparse_tuning.last_tokens[-1][1] < 65


def hand_macs_tome(r, C=64, H=4, classes=10, patches=64, P=4):
    """ToMe's tiny ViT written out (MACs): the blocks at their token counts, plus each merge's
    similarity matrix (A tokens x B tokens x head width); the gathers and sizes cost no MACs."""
    macs = patches * C * 3 * P * P
    n = patches + 1
    for _ in range(12):
        macs += 5 * n * C + 3 * n * C * C + 2 * n * n * C + n * C * C
        if min(r, (n - 1) // 2) > 0:
            macs += ((n + 1) // 2) * (n // 2) * (C // H)
            n -= min(r, (n - 1) // 2)
        macs += 5 * n * C + 8 * n * C * C
    return (macs + 5 * n * C + C * classes) / 1e9


@pytest.mark.parametrize("r", [2, 3, 8])
def test_tome_flops_match_the_hand_count(r):
    from sparse_tuning.methods import method_config, prepare

    model = prepare(tiny_vit(), "linear", method_config("linear", reduction="tome", tome_r=(r,)))
    assert st.count_flops(model, (3, 32, 32)) == pytest.approx(hand_macs_tome(r), rel=1e-12)


def test_parameters_and_flops_of_a_few_pairs_by_hand():
    from test_flops import hand_macs
    from test_methods import HAND

    from sparse_tuning.methods import method_config, prepare

    linear_ca = prepare(tiny_vit(), "linear", method_config("linear", 0.5, reduction="class-attention"))
    assert st.count_flops(linear_ca, (3, 32, 32)) == pytest.approx(hand_macs(0.5), rel=1e-12)  # = ts-only's
    assert st.count_params(linear_ca)[1] == HAND["linear"]
    lora_ca = prepare(tiny_vit(), "lora", method_config("lora", 0.7, reduction="class-attention"))
    assert st.count_params(lora_ca)[1] == HAND["lora"]
    adaptformer_tome = prepare(tiny_vit(), "adaptformer", method_config("adaptformer", reduction="tome"))
    assert st.count_params(adaptformer_tome)[1] == HAND["adaptformer"]
    adapter_ca = _reduced("adapter", reduction="class-attention", keep_rate=0.5)
    assert st.count_params(adapter_ca)[1] == HAND["adapter"]
    gflops = st.count_flops(adapter_ca, (3, 32, 32))
    # the sequential adapter (b = 64) at each block's token count after the reduction: down and up
    adapter_macs = sum(n_out * 2 * 64 * 64 for _, n_out in adapter_ca.sparse_tuning.last_tokens) / 1e9
    assert gflops == pytest.approx(hand_macs(0.5) + adapter_macs, rel=1e-12)
    vpt_ca = _reduced("vpt", reduction="class-attention", keep_rate=0.5)
    assert st.count_params(vpt_ca)[1] == HAND["vpt"]
    assert st.count_flops(vpt_ca, (3, 32, 32)) == pytest.approx(hand_macs(0.5, prompts=10), rel=1e-12)


def _reduced(method, **rule):
    """The method under a reduction, its weights those of the method alone (``plain``) where given."""
    from sparse_tuning.methods import method_config, prepare

    keep_rate = rule.pop("keep_rate", None)
    return prepare(tiny_vit(), method, method_config(method, keep_rate, **rule))


def _trained(model):
    """Adapters and prompts off their zero or fresh start (as after training)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.double()


def reference_adapter_vpt(vit, images, adapters=None, prompts=None):
    """The sequential adapter (Houlsby: f + up(relu(down(f))) on each FFN output f, inside the
    residual branch) and VPT-deep (each block's own prompts right after the class token, the
    previous block's prompt outputs replaced; all removed before the head), written here over
    timm's plain blocks from the papers' definitions."""
    x = vit.norm_pre(vit._pos_embed(vit.patch_embed(images)))
    P = vit.num_prefix_tokens
    for i, blk in enumerate(vit.blocks):
        if prompts is not None:
            rest = x[:, P + (prompts.shape[1] if i else 0):]
            x = torch.cat([x[:, :P], prompts[i].expand(x.shape[0], -1, -1), rest], dim=1)
        x = x + blk.attn.proj(torch.nn.functional.scaled_dot_product_attention(
            *blk.attn.qkv(blk.norm1(x)).reshape(x.shape[0], x.shape[1], 3, blk.attn.num_heads, -1)
            .permute(2, 0, 3, 1, 4).unbind(0)).transpose(1, 2).flatten(2))
        f = blk.mlp(blk.norm2(x))
        if adapters is not None:
            down, up = adapters[i]
            f = f + torch.nn.functional.linear(torch.relu(torch.nn.functional.linear(f, *down)), *up)
        x = x + f
    if prompts is not None:
        x = torch.cat([x[:, :P], x[:, P + prompts.shape[1]:]], dim=1)
    return vit.forward_head(vit.norm(x))


@pytest.mark.parametrize("method", ["adapter", "vpt"])
@pytest.mark.parametrize("rule", [None, dict(reduction="class-attention", keep_rate=1.0),
                                  dict(reduction="random", keep_rate=1.0), dict(reduction="tome", tome_r=(0,))])
def test_adapter_and_vpt_are_their_papers_with_or_without_a_rule_that_removes_nothing(method, rule, images):
    """One implementation each, with one set of names: the method alone and under a rule that
    removes nothing compute the reference written here, with the same trained weights."""
    from sparse_tuning.methods import prepare

    model = _trained(prepare(tiny_vit(), method) if rule is None else _reduced(method, **rule))
    weights = dict(model.named_parameters())
    plain = tiny_vit().double()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k in plain.state_dict()})
    if method == "adapter":
        adapters = [((weights[f"blocks.{i}.ffn_adapter.down.weight"], weights[f"blocks.{i}.ffn_adapter.down.bias"]),
                     (weights[f"blocks.{i}.ffn_adapter.up.weight"], weights[f"blocks.{i}.ffn_adapter.up.bias"]))
                    for i in range(12)]
        expected, names = reference_adapter_vpt(plain, images.double(), adapters=adapters), "ffn_adapter"
    else:
        expected, names = reference_adapter_vpt(plain, images.double(), prompts=weights["blocks.prompts"]), "prompts"
    assert {n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")} == \
        {n for n in weights if names in n}
    with torch.no_grad():
        assert torch.allclose(model(images.double()), expected, atol=1e-10, rtol=0)
    assert model.sparse_tuning.last_tokens[-1] == (65 + 10 * (method == "vpt"),) * 2


def test_an_adapter_file_loads_with_or_without_a_reduction_and_from_before_one_implementation(tmp_path):
    """The trainable file of an adapter run trained with a reduction loads into the method alone and
    back; a file written when the method's own blocks named it ``blocks.N.adapter`` still loads."""
    from sparse_tuning.methods import prepare
    from sparse_tuning.training.checkpoint import load_trainable, save_trainable

    reduced = _trained(_reduced("adapter", reduction="class-attention", keep_rate=0.5)).float()
    save_trainable(reduced, tmp_path / "a.safetensors", {})
    alone = prepare(tiny_vit(), "adapter")
    load_trainable(alone, tmp_path / "a.safetensors")
    assert all(torch.equal(p, dict(reduced.named_parameters())[n]) for n, p in alone.named_parameters()
               if p.requires_grad)
    save_trainable(alone, tmp_path / "b.safetensors", {})
    again = _reduced("adapter", reduction="tome", tome_r=(2,))
    load_trainable(again, tmp_path / "b.safetensors")
    assert all(torch.equal(p, dict(reduced.named_parameters())[n]) for n, p in again.named_parameters()
               if p.requires_grad)
    from safetensors.torch import load_file, save_file

    old = {k.replace(".ffn_adapter.", ".adapter."): v for k, v in load_file(str(tmp_path / "a.safetensors")).items()}
    save_file(old, str(tmp_path / "old.safetensors"))
    fresh = prepare(tiny_vit(), "adapter")
    load_trainable(fresh, tmp_path / "old.safetensors")
    assert torch.equal(fresh.blocks[4].ffn_adapter.up.weight, reduced.blocks[4].ffn_adapter.up.weight)


@pytest.mark.parametrize("rule", [dict(reduction="class-attention", keep_rate=0.5),
                                  dict(reduction="random", keep_rate=0.5), dict(reduction="tome", tome_r=(6,))])
def test_vpt_prompts_are_protected_prefix_tokens_of_every_rule(rule, images):
    """No rule ranks, keeps, drops or merges a prompt: the budget is the patches', each block
    holds its own 10 prompts after the class token, and every patch stays in a patch token."""
    model = _trained(_reduced("vpt", **rule))
    torch.manual_seed(0)
    out = model(images.double())
    state = model.sparse_tuning
    assert state.num_prefix == 1 + 10
    counts = [n_out for _, n_out in state.last_tokens]
    if rule["reduction"] == "tome":
        assert counts[:3] == [65 + 10 - 6, 65 + 10 - 12, 65 + 10 - 18]
        sources = st.token_sources(model)[-1]
        assert sources.min() >= 11 and sources.max() < counts[-1]  # patches in patch tokens only
    else:
        assert (counts[3], counts[6], counts[9]) == (11 + 32 + 1, 11 + 17 + 1, 11 + 9 + 1)  # ceil(0.5 M) + fused
        kept = st.kept_tokens(model)
        assert kept[0].shape[1] == 32 and ((kept[0] >= 0) & (kept[0] < 64)).all()  # 32 of the 64 patches
        assert all(((k >= -1) & (k < 64)).all() for k in kept)  # later: patches or the fused token (-1)
    # every block's own prompts reach the output (they are not dropped with the tokens around them)
    g = torch.Generator().manual_seed(1)
    for i in (0, 6, 11):
        with torch.no_grad():  # not a constant shift, which the next LayerNorm would remove
            model.blocks.prompts[i] += torch.randn(model.blocks.prompts[i].shape, generator=g, dtype=torch.float64)
        torch.manual_seed(0)
        changed = model(images.double())
        assert not torch.allclose(changed, out)
        out = changed


def test_adapter_and_vpt_under_tome_take_gradient_checkpointing():
    from test_methods import _one_backward

    for method in ("adapter", "vpt"):
        expected = _one_backward(_reduced(method, reduction="tome", tome_r=(4,)), False)
        got = _one_backward(_reduced(method, reduction="tome", tome_r=(4,)), True)
        assert got.keys() == expected.keys()
        for name in expected:
            assert torch.allclose(got[name], expected[name], atol=1e-10, rtol=0), name


def test_vpt_prompts_are_not_lost_to_a_later_apply_or_an_adapter_file(tmp_path):
    """A VPT model is not Sparse-Tuning's to patch (its prompts would go), and an adapter file,
    which holds Dense Adapters and the head, refuses a model that trains other weights."""
    from sparse_tuning.methods import prepare

    with pytest.raises(ValueError, match="already has a method's adapters or prompts"):
        st.apply(prepare(tiny_vit(), "vpt"))
    for method in ("vpt", "adapter"):
        with pytest.raises(ValueError, match="also trains blocks"):
            st.save_adapters(_reduced(method, reduction="tome", tome_r=(2,)), tmp_path / "a.safetensors")
    assert not (tmp_path / "a.safetensors").exists()
    assert _reduced("vpt", reduction="tome").sparse_tuning.num_prompts == 10


def test_methods_whose_blocks_are_their_own_refuse_a_reduction():
    from sparse_tuning.methods import method_config

    with pytest.raises(ValueError, match="does not apply to --method da-only"):
        method_config("da-only", reduction="tome")
    from sparse_tuning.tools.flops import model_cost

    with pytest.raises(ValueError, match="--method dense is the plain model"):
        model_cost("st_vit_micro_patch4_32", "dense", reduction="tome", tome_r=(8,))
    with pytest.raises(ValueError, match="--keep-rate does not apply to --method lora .it keeps every token; a "
                                         "--reduction reduces them"):
        method_config("lora", 0.5)


def test_a_rules_options_given_with_another_rule_are_refused_not_ignored():
    from sparse_tuning.methods import method_config

    with pytest.raises(ValueError, match="--keep-rate does not apply to --reduction tome"):
        method_config("sparse-tuning", 0.5, reduction="tome")
    with pytest.raises(ValueError, match="--sparsify-at does not apply to --reduction tome"):
        method_config("lora", None, reduction="tome", sparsify_at=(2,))
    with pytest.raises(ValueError, match="--tome-r does not apply to --reduction class-attention"):
        method_config("sparse-tuning", None, tome_r=(4,))
    with pytest.raises(ValueError, match="--proportional-attention does not apply to --reduction random"):
        method_config("lora", 0.5, reduction="random", proportional_attention=False)
    with pytest.raises(ValueError, match="--keep-rate does not apply to --reduction none"):
        method_config("sparse-tuning", 0.5, reduction="none")
    # a default value is not an option given: a whole recorded config still resolves
    assert method_config("sparse-tuning", 0.7, reduction="tome", tome_r=(3,), merge="mean").tome_r == (3,)
    with pytest.raises(ValueError, match="--keep-rate applies to models that sparsify tokens|ToMe"):
        st_model = st.apply(tiny_vit(), st.SparseTuningConfig(reduction="tome"))
        from sparse_tuning.api import set_keep_rate

        set_keep_rate(st_model, 0.5)


def test_bench_measures_every_method_under_every_rule(tmp_path):
    import json

    from sparse_tuning.cli import main

    assert main(["bench", "--model", "st_vit_micro_patch4_32", "--methods", "lora,adaptformer",
                 "--reductions", "none,class-attention,tome", "--tome-r", "4", "--keep-rate", "0.5",
                 "--rounds", "1", "--warmup", "0", "--batch-size", "2", "--no-memory", "--out", str(tmp_path)]) == 0
    rows = {r["method"]: r for r in json.loads((tmp_path / "bench.json").read_text())["rows"]}
    assert list(rows) == ["lora+none", "lora+class-attention", "lora+tome",
                          "adaptformer+none", "adaptformer+class-attention", "adaptformer+tome"]
    for m in ("lora", "adaptformer"):
        assert rows[f"{m}+class-attention"]["params_trainable"] == rows[f"{m}+none"]["params_trainable"]
        assert rows[f"{m}+class-attention"]["gflops"] < rows[f"{m}+none"]["gflops"]
        assert rows[f"{m}+tome"]["gflops"] < rows[f"{m}+none"]["gflops"]


@pytest.mark.parametrize("rule", [dict(reduction="class-attention", keep_rate=0.5),
                                  dict(reduction="random", keep_rate=0.6, merge="drop")])
def test_token_sources_of_a_keep_rule_by_a_loop_over_patches(rule):
    """Where each patch is after every block, by a plain loop over patches and the recorded kept
    indices: a kept one moves to its place among the kept, the others to the fused token (or
    -1, dropped); each image of the batch keeps its own tokens."""
    torch.manual_seed(0)
    model = st.apply(tiny_vit(), st.SparseTuningConfig(**rule)).eval()
    with torch.no_grad():
        model(torch.randn(3, 3, 32, 32))
    sources, state = st.token_sources(model), model.sparse_tuning
    steps = dict(zip(state.sparsify_at, state.last_steps))
    assert not torch.equal(steps[3].keep_idx[0], steps[3].keep_idx[1])
    for b in range(3):
        where = {p: 1 + p for p in range(64)}
        for block in range(12):
            if block in steps:
                keep = steps[block].keep_idx[b].tolist()
                fused = -1 if rule.get("merge") == "drop" else 1 + len(keep)
                where = {p: -1 if w == -1 else (1 + keep.index(w - 1) if w - 1 in keep else fused)
                         for p, w in where.items()}
            assert sources[block][b].tolist() == [where[p] for p in range(64)], (b, block)


def test_restore_puts_every_token_back_where_it_came_from():
    """restore(x, sources) by a loop over positions: a hand-made plan (prefix, kept, fused, dropped)
    and real plans of each rule, composed over the blocks."""
    from sparse_tuning.core.reduction import compose_sources, restore

    reduced = torch.arange(2 * 4 * 3, dtype=torch.float64).view(2, 4, 3)
    sources = torch.tensor([[0, 3, 1, -1, 2, 3], [0, 2, 3, 3, 1, -1]])
    by_loop = torch.zeros(2, 6, 3, dtype=torch.float64)
    for b in range(2):
        for n in range(6):
            if sources[b, n] >= 0:
                by_loop[b, n] = reduced[b, sources[b, n]]
    assert torch.equal(restore(reduced, sources), by_loop)
    for rule in (dict(reduction="class-attention", keep_rate=0.5), dict(reduction="tome", tome_r=(5,))):
        model = st.apply(tiny_vit(), st.SparseTuningConfig(**rule)).eval()
        with torch.no_grad():
            model(torch.randn(2, 3, 32, 32))
        state = model.sparse_tuning
        per_block = compose_sources(state.last_plans, 65, 2)
        out = torch.randn(2, state.last_tokens[-1][1], 3)
        full = restore(out, per_block[-1])
        for b in range(2):
            for n in range(65):
                assert torch.equal(full[b, n], out[b, per_block[-1][b, n]])
        assert per_block[-1][:, 0].eq(0).all()  # the class token stays first
