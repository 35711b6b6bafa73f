"""The control for the ranking: a uniform random keep_rate share, the others fused with equal
weights. torch's generator draws it (torch.manual_seed reproduces it, checkpointing replays it)."""
from __future__ import annotations

from ..reduction import BlockTokens, register_rule
from ._keep import KeepRule


class RandomKeep(KeepRule):
    name = "random"
    help = "a random keep_rate share at sparsify_at, the rest fused with equal weights: the control"

    def scores(self, seen: BlockTokens):
        import torch

        B, N, _ = seen.tokens.shape
        ranks = torch.rand(B, N - seen.num_prefix, device=seen.tokens.device)
        return ranks, torch.ones_like(ranks)


register_rule(RandomKeep())
