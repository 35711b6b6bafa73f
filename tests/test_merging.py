"""ToMe's merge (core/merging.py) against a reference written here from ToMe's published
algorithm (Bolya et al. 2023, and the facebookresearch/ToMe README): one class token, or a
class and a distillation token, as ToMe's own code handles them."""
import math

import pytest
import torch

from sparse_tuning.core.merging import bipartite_plan, merge_plan, merge_tokens
from sparse_tuning.core.reduction import compose_sources


def merge_step(x, metric, size, r, prefix):
    """ToMe's merge of r tokens: the merged tokens, their sizes, and the plan (None: nothing merged)."""
    step = merge_plan(x, metric, size, r, prefix)
    return (x, size, None) if step is None else (step.apply(x), step.new_size, step)


def reference_tome(x, size, metric, r, class_token=True, distill_token=False):
    """Bipartite soft matching, then the size-weighted average, token by token (loops, no
    gathers): a second implementation to compare with, in float64."""
    B, N, C = x.shape
    protected = int(class_token) + int(distill_token)
    r = min(r, (N - protected) // 2)
    outs, sizes = [], []
    for b in range(B):
        m = metric[b] / metric[b].norm(dim=-1, keepdim=True)
        A, Bset = list(range(0, N, 2)), list(range(1, N, 2))
        best = {}
        for i in A:
            sims = [(-math.inf if (class_token and i == 0) or (distill_token and j == 1) else float(m[i] @ m[j]), j)
                    for j in Bset]
            best[i] = max(sims, key=lambda t: t[0])  # first maximum on ties, as torch.max
        order = sorted(A, key=lambda i: -best[i][0])  # the strongest edges first
        merged = order[:r]
        groups = {j: [j] for j in Bset}
        for i in merged:
            groups[best[i][1]].append(i)
        kept_a = sorted(order[r:])
        tokens = [[i] for i in kept_a] + [groups[j] for j in Bset]
        if distill_token:  # ToMe's layout: class, distillation, the other A tokens, the other B tokens
            tokens = tokens[:1] + [tokens[len(kept_a)]] + tokens[1:len(kept_a)] + tokens[len(kept_a) + 1:]
        s = torch.stack([size[b, g].sum(0) for g in tokens])
        v = torch.stack([(x[b, g] * size[b, g]).sum(0) for g in tokens]) / s
        outs.append(v)
        sizes.append(s)
    return torch.stack(outs), torch.stack(sizes)


@pytest.mark.parametrize("prefix", [1, 2])
@pytest.mark.parametrize("r", [1, 5, 8, 100])
def test_merge_equals_the_reference_over_several_blocks(prefix, r):
    g = torch.Generator().manual_seed(r + prefix)
    B, N, C, D = 3, 1 + 2 * 12 + prefix - 1, 6, 4
    x = torch.randn(B, N, C, generator=g, dtype=torch.float64)
    size, ref_x, ref_size = None, x, torch.ones(B, N, 1, dtype=torch.float64)
    for _ in range(3):  # sizes other than 1 from the second block on
        metric = torch.randn(B, x.shape[1], D, generator=g, dtype=torch.float64)
        x, size, step = merge_step(x, metric, size, r, prefix)
        ref_x, ref_size = reference_tome(ref_x, ref_size, metric, r, distill_token=prefix == 2)
        assert x.shape == ref_x.shape and torch.allclose(x, ref_x, atol=1e-12)
        assert torch.equal(size, ref_size)
    assert size.sum(dim=1).flatten().tolist() == [N] * B  # every original token is held once


def test_prefix_tokens_never_merge_and_come_first():
    g = torch.Generator().manual_seed(0)
    for prefix in (1, 2, 3, 5):
        x = torch.randn(2, prefix + 20, 4, generator=g)
        x[:, :prefix] = 100 + torch.arange(prefix, dtype=torch.float32)[:, None]  # recognisable
        metric = x.clone()  # the prefix tokens alike: they would merge if allowed
        merged, size, _ = merge_step(x, metric, None, 10, prefix)
        assert merged.shape[1] == prefix + 10
        assert torch.equal(merged[:, :prefix], x[:, :prefix]) and (size[:, :prefix] == 1).all()


def test_sources_name_the_token_holding_each_patch():
    """The plans' sources composed (core/reduction.py) against ToMe's own bookkeeping: a source
    matrix merged with 'amax'."""
    g = torch.Generator().manual_seed(1)
    B, P, M = 2, 1, 24
    x, size, steps = torch.randn(B, P + M, 8, generator=g), None, []
    source = torch.eye(P + M).expand(B, -1, -1)
    for r in (4, 0, 6):
        x, size, step = merge_step(x, torch.randn(B, x.shape[1], 3, generator=g), size, r, P)
        steps.append(step)
        if step is not None:
            source = merge_tokens(source, step.plan, mode="amax")
        where = compose_sources(steps, P + M, B)[-1][:, P:]
        assert torch.equal(where, source[:, :, P:].argmax(dim=1))
        assert torch.equal(source.sum(dim=2, keepdim=True), size if size is not None else torch.ones_like(source[..., :1]))


def test_nothing_merges_when_r_is_zero_or_there_is_nothing_to_pair():
    x = torch.randn(1, 2, 4)
    assert bipartite_plan(x, 0, 1) is None and bipartite_plan(x, 3, 1) is None
    assert merge_plan(x, x, None, 0, 1) is None
