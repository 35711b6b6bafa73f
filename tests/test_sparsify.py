"""The pure token-sparsification functions against hand computations."""
import math

import pytest
import torch

from sparse_tuning.core.sparsify import (apply_step, class_attention_scores, keep_count, keep_plan, original_positions,
                                         plan_step)


@pytest.mark.parametrize("rate,m,k", [
    (0.7, 196, 138), (0.7, 139, 98), (0.7, 99, 70),   # ViT-B: 197 -> 140 -> 100 -> 72
    (0.7, 140, 98), (0.5, 10, 5), (1.0, 50, 50), (0.01, 5, 1), (0.34, 3, 2),
])
def test_keep_count(rate, m, k):
    assert keep_count(rate, m) == k


def test_class_attention_scores_is_head_mean_of_class_row():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 7, 5, generator=g), torch.randn(2, 3, 7, 5, generator=g)
    scale = 5 ** -0.5
    full = torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1)    # (B, H, N, N)
    expected = full[:, :, 0, :].mean(dim=1)
    assert torch.allclose(class_attention_scores(q, k, scale), expected, atol=1e-6)


def _by_hand(x, scores, k, num_prefix, merge):
    """The step written out token by token."""
    B, N, C = x.shape
    out = []
    for b in range(B):
        s = scores[b, num_prefix:].tolist()
        order = sorted(range(len(s)), key=lambda j: -s[j])
        kept = sorted(order[:k])
        rest = order[k:]
        rows = [x[b, i] for i in range(num_prefix)] + [x[b, num_prefix + j] for j in kept]
        if merge != "drop":
            fused = sum(s[j] * x[b, num_prefix + j] for j in rest)
            if merge == "mean":
                fused = fused / sum(s[j] for j in rest)
            rows.append(fused)
        out.append(torch.stack(rows))
    return torch.stack(out)


@pytest.mark.parametrize("merge", ["mean", "sum", "drop"])
@pytest.mark.parametrize("num_prefix", [1, 2, 5])
def test_step_matches_hand_computation(merge, num_prefix):
    g = torch.Generator().manual_seed(num_prefix)
    x = torch.randn(3, num_prefix + 10, 4, generator=g)
    scores = torch.rand(3, num_prefix + 10, generator=g)
    plan = keep_plan(x, scores[:, num_prefix:], 0.7, num_prefix, merge)
    y, step = plan.apply(x), plan.step
    k = math.ceil(0.7 * 10)
    assert y.shape == (3, num_prefix + k + (merge != "drop"), 4)
    assert torch.allclose(y, _by_hand(x, scores, k, num_prefix, merge), atol=1e-6)
    assert step.keep_idx.shape == (3, k)


def test_no_op_when_everything_is_kept():
    x, scores = torch.randn(2, 5, 3), torch.rand(2, 4)
    assert keep_plan(x, scores, 1.0, 1, "mean") is None


def test_same_step_applies_to_other_tensors():
    """An adapter output follows the tokens: same indices, same weights."""
    g = torch.Generator().manual_seed(3)
    a, scores = torch.randn(2, 9, 6, generator=g), torch.rand(2, 8, generator=g)
    step = plan_step(scores, 5, "mean")
    full_scores = torch.cat([torch.zeros(2, 1), scores], dim=1)
    assert torch.allclose(apply_step(a, step, 1), _by_hand(a, full_scores, 5, 1, "mean"), atol=1e-6)


def test_original_positions_compose_and_mark_fused():
    # 6 patches; step 1 keeps current tokens 0, 2, 5 and fuses 1, 3, 4 -> [0, 2, 5, F]
    # step 2 keeps current tokens 1 and 3 (patch 2 and the fused one) -> [2, -1]
    s1 = plan_step(torch.tensor([[.9, .1, .8, .1, .1, .7]]), 3, "mean")
    s2 = plan_step(torch.tensor([[.1, .9, .1, .8]]), 2, "mean")
    pos = original_positions([s1, None, s2], 6, 1)
    assert pos[0].tolist() == [[0, 2, 5]]
    assert pos[1].tolist() == [[0, 2, 5, -1]]
    assert pos[2].tolist() == [[2, -1]]
    dropped = original_positions([plan_step(torch.tensor([[.9, .1, .8]]), 2, "drop")], 3, 1)
    assert dropped[0].tolist() == [[0, 2]]


@pytest.mark.parametrize("merge", ["mean", "drop"])
def test_a_keep_plans_sources_by_a_loop(merge):
    """Where each input token goes: a prefix token stays, a kept one moves to its place among the
    kept (after the prefix), the others to the fused token, or -1 when dropped."""
    g = torch.Generator().manual_seed(7)
    P, M = 2, 9
    x, scores = torch.randn(3, P + M, 4, generator=g), torch.rand(3, M, generator=g)
    plan = keep_plan(x, scores, 0.5, P, merge)
    k = math.ceil(0.5 * M)
    for b in range(3):
        kept = sorted(scores[b].topk(k).indices.tolist())
        expected = list(range(P)) + [P + kept.index(j) if j in kept else (P + k if merge == "mean" else -1)
                                     for j in range(M)]
        assert plan.sources()[b].tolist() == expected
    assert plan.flops(4) == (3 * M * 4 if merge == "mean" else 0)


def test_an_unknown_merge_is_refused_by_name():
    with pytest.raises(ValueError, match=r"^merge='avg': expected one of mean, sum, drop$"):
        plan_step(torch.rand(1, 4), 2, "avg")
