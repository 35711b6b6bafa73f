"""ToMe's rule (Bolya et al., ICLR 2023): in every block, merge tome_r tokens by bipartite soft
matching on the head-averaged keys; proportional attention weighs a merged token by its size.
The math is core/merging.py's."""
from __future__ import annotations

from typing import Any, Optional

from ..reduction import BlockTokens, Needs, Plan, Rule, register_rule


class ToMe(Rule):
    name = "tome"
    help = "ToMe: merge tome_r tokens in every block by key similarity, with proportional attention"
    fields = frozenset({"tome_r", "proportional_attention"})

    def blocks(self, config: Any, depth: int) -> tuple[int, ...]:
        config.resolve_tome_r(depth)  # one r, or one per block: checked against the depth
        return tuple(range(depth))

    def needs(self, config: Any, block: int, depth: int) -> Needs:
        return Needs(keys=config.resolve_tome_r(depth)[block] > 0, sizes=config.proportional_attention)

    def plan(self, config: Any, block: int, depth: int, seen: BlockTokens) -> Optional[Plan]:
        r = config.resolve_tome_r(depth)[block]
        if not r:
            return None
        from ..merging import merge_plan

        return merge_plan(seen.tokens, seen.keys, seen.size, r, seen.num_prefix)

    def removing_nothing(self, config: Any) -> dict[str, Any]:
        return {"tome_r": (0,)}

    def describe(self, config: Any, blocks: Optional[tuple[int, ...]] = None) -> str:
        r = config.tome_r[0] if len(config.tome_r) == 1 else list(config.tome_r)
        return f"ToMe, r {r} per block" + ("" if config.proportional_attention else ", no proportional attention")


register_rule(ToMe())
