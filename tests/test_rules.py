"""The reduction-rule protocol (core/reduction.py): the registry, each plan's sources and FLOPs
against independent counts, and the feature-norm rule, which landed as one file, against a
reference written here, on both hosts."""
import math
import re
from pathlib import Path

import pytest
import torch
from conftest import randomize_adapters, tiny_vit
from test_hf_host import hf_vit, timm_from_hf

import sparse_tuning as st
from sparse_tuning.core.reduction import get_rule, rule_names


def test_the_registry_holds_every_rule_and_the_config_takes_them():
    assert {"class-attention", "random", "tome", "none", "feature-norm"} <= set(rule_names())
    for name in rule_names():
        rule = get_rule(name)
        assert rule.name == name and rule.help
        st.SparseTuningConfig(reduction=name)
    with pytest.raises(ValueError, match="reduction='bogus': expected one of .*feature-norm"):
        st.SparseTuningConfig(reduction="bogus")


def test_no_host_names_a_rule():
    """The hosts ask the rule what to compute and what to do; none compares rule names."""
    hosts = Path(st.__file__).parent / "hosts"
    names = [n for n in rule_names() if n != "none"]
    for path in hosts.glob("*.py"):
        code = re.sub(r'"""[\s\S]*?"""|#.*', "", path.read_text())  # docstrings and comments may name them
        for name in names:
            assert f'"{name}"' not in code and f"'{name}'" not in code, (path.name, name)


def reference_feature_norm_vit(vit, images, keep_rate, blocks=(3, 6, 9)):
    """Feature-norm token reduction from its definition, over timm's plain blocks: after a block's
    attention, keep the ceil(keep_rate * M) patch tokens of largest L2 norm (in their order) and
    fuse the others into one token, weighted by their norms normalised to sum 1."""
    x = vit.norm_pre(vit._pos_embed(vit.patch_embed(images)))
    for i, blk in enumerate(vit.blocks):
        x = x + blk.attn(blk.norm1(x))
        if i in blocks:
            rows = []
            for b in range(x.shape[0]):
                tokens = x[b, 1:]
                norms = tokens.norm(dim=-1)
                k = math.ceil(keep_rate * len(tokens) - 1e-6)
                kept = sorted(norms.topk(k).indices.tolist())
                rest = [j for j in range(len(tokens)) if j not in kept]
                w = norms[rest] / norms[rest].sum()
                rows.append(torch.cat([x[b, :1], tokens[kept], (w[:, None] * tokens[rest]).sum(0, keepdim=True)]))
            x = torch.stack(rows)
        x = x + blk.mlp(blk.norm2(x))
    return vit.forward_head(vit.norm(x))


def test_feature_norm_is_its_definition_on_timm(images):
    model = st.apply(tiny_vit().double(), st.SparseTuningConfig(reduction="feature-norm", keep_rate=0.5,
                                                                adapters=False)).eval()
    with torch.no_grad():
        ours = model(images.double())
        theirs = reference_feature_norm_vit(tiny_vit().double(), images.double(), 0.5)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)
    assert [n for _, n in model.sparse_tuning.last_tokens][9:] == [1 + 9 + 1] * 3  # 64 -> 33 -> 18 -> 10 (+ fused)


@pytest.mark.parametrize("fused", [True, False])
def test_feature_norm_on_transformers_equals_timm(images, tmp_path, fused):
    """The same rule, the same weights and adapters: the same logits, kept tokens and sources."""
    hf = hf_vit().double()
    config = st.SparseTuningConfig(reduction="feature-norm", keep_rate=0.6)
    vit = st.apply(timm_from_hf(hf), config)
    randomize_adapters(vit)
    st.save_adapters(vit, tmp_path / "norm.safetensors")
    hf = st.load_adapters(hf_vit().double(), tmp_path / "norm.safetensors")
    vit.sparse_tuning.fused_attn = hf.sparse_tuning.fused_attn = fused
    x = images.double()
    with torch.no_grad():
        a, b = vit(x), hf(pixel_values=x).logits
    assert torch.allclose(a, b, atol=1e-10, rtol=0)
    assert hf.sparse_tuning.last_tokens == vit.sparse_tuning.last_tokens and vit.sparse_tuning.last_tokens[-1][1] < 65
    assert all(torch.equal(p, q) for p, q in zip(st.kept_tokens(vit), st.kept_tokens(hf)))
    assert all(torch.equal(p, q) for p, q in zip(st.token_sources(vit), st.token_sources(hf)))


@pytest.mark.parametrize("rule", [dict(reduction="class-attention", keep_rate=0.5),
                                  dict(reduction="feature-norm", keep_rate=0.5, merge="drop"),
                                  dict(reduction="tome", tome_r=(4,))])
def test_a_plans_flops_are_what_the_flop_counter_counts_of_its_apply(rule):
    from torch.utils.flop_counter import FlopCounterMode

    model = st.apply(tiny_vit(), st.SparseTuningConfig(**rule)).eval()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    plans = [p for p in model.sparse_tuning.last_plans if p is not None]
    assert plans
    for plan in plans:
        n_in = plan.sources().shape[1]
        x = torch.randn(2, n_in, 64)
        with FlopCounterMode(display=False) as counter:
            plan.apply(x)
        assert counter.get_total_flops() == 2 * plan.flops(64)  # the counter's FLOPs are 2 per multiply-add


def test_every_token_turns_off_any_rule_by_its_own_fields():
    from sparse_tuning.training.distill import every_token

    for rule in (dict(reduction="feature-norm", keep_rate=0.5), dict(reduction="tome", tome_r=(4,))):
        model = st.apply(tiny_vit(), st.SparseTuningConfig(**rule)).eval()
        with torch.no_grad(), every_token(model):
            model(torch.randn(1, 3, 32, 32))
            assert model.sparse_tuning.last_tokens[-1][1] == 65
        assert model.sparse_tuning.config.reduction == rule["reduction"]


def test_what_each_rule_asks_of_each_block_and_how_it_says_so():
    """The protocol's table for a 12-block model: the keep rules read the class token's attention
    (class-attention only) at their blocks and nothing elsewhere; ToMe reads the keys where it
    merges and the sizes everywhere when proportional; their settings that remove nothing; their
    descriptions."""
    from sparse_tuning.core.reduction import NOTHING, Needs

    table = {
        "class-attention": ({3, 6, 9}, Needs(class_scores=True), {"keep_rate": 1.0},
                            "class-attention, keep rate 0.5 at blocks (3, 6, 9), merge mean"),
        "random": ({3, 6, 9}, NOTHING, {"keep_rate": 1.0}, "random, keep rate 0.5 at blocks (3, 6, 9), merge mean"),
        "feature-norm": ({3, 6, 9}, NOTHING, {"keep_rate": 1.0},
                         "feature-norm, keep rate 0.5 at blocks (3, 6, 9), merge mean"),
    }
    for name, (blocks, needs, off, words) in table.items():
        config = st.SparseTuningConfig(reduction=name, keep_rate=0.5)
        rule = get_rule(name)
        assert rule.has_keep_rate and set(rule.blocks(config, 12)) == blocks
        assert [rule.needs(config, b, 12) for b in range(12)] == [needs if b in blocks else NOTHING for b in range(12)]
        assert rule.removing_nothing(config) == off and config.describe_reduction((3, 6, 9)) == words
        assert config.describe_reduction() == f"{name}, keep rate 0.5"
        assert not config.keeps_every_token and st.SparseTuningConfig(reduction=name, keep_rate=1.0).keeps_every_token
    tome = st.SparseTuningConfig(reduction="tome", tome_r=(0, 2) * 6)
    rule = get_rule("tome")
    assert not rule.has_keep_rate and rule.blocks(tome, 12) == tuple(range(12))
    assert [rule.needs(tome, b, 12) for b in range(12)] == [Needs(keys=b % 2 == 1, sizes=True) for b in range(12)]
    flat = st.SparseTuningConfig(reduction="tome", tome_r=(4,), proportional_attention=False)
    assert [rule.needs(flat, b, 12) for b in range(12)] == [Needs(keys=True)] * 12
    assert rule.removing_nothing(tome) == {"tome_r": (0,)} and not tome.keeps_every_token
    assert tome.describe_reduction() == "ToMe, r [0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2] per block"
    assert flat.describe_reduction() == "ToMe, r 4 per block, no proportional attention"
    none = st.SparseTuningConfig(reduction="none")
    assert none.keeps_every_token and none.describe_reduction() == "every token kept" and none.reduces_at(12) == ()


def test_the_random_rule_fuses_the_others_with_equal_weights():
    """Its ranks are a random draw; the fused token is the plain mean of the tokens not kept, not
    a draw-weighted one."""
    from sparse_tuning.core.reduction import BlockTokens

    torch.manual_seed(0)
    config = st.SparseTuningConfig(reduction="random", keep_rate=0.5)
    x = torch.randn(2, 1 + 10, 4)
    plan = get_rule("random").plan(config, 3, 12, BlockTokens(x, 1, None, None, None))
    out = plan.apply(x)
    for b in range(2):
        kept = plan.step.keep_idx[b].tolist()
        rest = [j for j in range(10) if j not in kept]
        assert torch.allclose(out[b, -1], x[b, 1:][rest].mean(0), atol=1e-6)


def test_registering_a_rule_twice_is_refused_and_a_registered_rule_is_found():
    from sparse_tuning.core import reduction

    class Probe(reduction.Rule):
        name, help = "probe-rule", "a rule the test registers"

    rule = reduction.register_rule(Probe())
    try:
        assert reduction.get_rule("probe-rule") is rule and "probe-rule" in rule_names()
        with pytest.raises(ValueError, match="reduction rule 'probe-rule' is registered twice"):
            reduction.register_rule(Probe())
    finally:
        del reduction._RULES["probe-rule"]
    with pytest.raises(ValueError, match=r"^reduction='probe-rule': expected one of class-attention, feature-norm, "
                                         r"none, random, tome$"):
        reduction.get_rule("probe-rule")
