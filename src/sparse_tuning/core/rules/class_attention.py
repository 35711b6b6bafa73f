"""The method's rule (EViT's, as Sparse-Tuning uses it): rank the tokens by the attention the
class token pays them, averaged over heads, and fuse the rest weighted by the same attention."""
from __future__ import annotations

from ..reduction import BlockTokens, Needs, register_rule
from ._keep import KeepRule


class ClassAttention(KeepRule):
    name = "class-attention"
    help = "the top keep_rate share by the class token's attention at sparsify_at, the rest fused: the method"
    reads = Needs(class_scores=True)

    def scores(self, seen: BlockTokens):
        return seen.class_scores[:, seen.num_prefix:], None


register_rule(ClassAttention())
