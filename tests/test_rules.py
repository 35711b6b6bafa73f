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
