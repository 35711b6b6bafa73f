"""Keep the tokens with the largest features: rank the non-prefix tokens by the L2 norm of their
features after the block's attention, keep the top keep_rate share and fuse the others weighted
by the same norms. A parameter-free importance score from the token-pruning literature that
reads no attention map, so it works with any attention kernel, fused or not; a second ranking
to set against the class token's (class-attention) and against chance (random)."""
from __future__ import annotations

from ..reduction import BlockTokens, register_rule
from ._keep import KeepRule


class FeatureNorm(KeepRule):
    name = "feature-norm"
    help = "the top keep_rate share by the L2 norm of each token's features at sparsify_at, the rest fused"

    def scores(self, seen: BlockTokens):
        return seen.tokens[:, seen.num_prefix:].float().norm(dim=-1), None


register_rule(FeatureNorm())
