"""What the keep rules share (class-attention, random, feature-norm): at a few blocks, keep the
top ceil(keep_rate * M) of the M non-prefix tokens by a score and fold the others into one token
(or drop them), by the config's keep_rate, sparsify_at and merge."""
from __future__ import annotations

from typing import Any, ClassVar, Optional

from ..reduction import NOTHING, BlockTokens, Needs, Plan, Rule


class KeepRule(Rule):
    fields: ClassVar[frozenset[str]] = frozenset({"keep_rate", "sparsify_at", "merge"})
    has_keep_rate: ClassVar[bool] = True
    reads: ClassVar[Needs] = NOTHING   # what the score needs from the attention

    def blocks(self, config: Any, depth: int) -> tuple[int, ...]:
        return config.resolve_sparsify_at(depth)

    def needs(self, config: Any, block: int, depth: int) -> Needs:
        return self.reads if block in self.blocks(config, depth) else NOTHING

    def plan(self, config: Any, block: int, depth: int, seen: BlockTokens) -> Optional[Plan]:
        if block not in self.blocks(config, depth):
            return None
        from ..sparsify import keep_plan

        scores, merge_scores = self.scores(seen)
        return keep_plan(seen.tokens, scores, config.keep_rate, seen.num_prefix, config.merge, merge_scores)

    def scores(self, seen: BlockTokens) -> tuple[Any, Any]:
        """(ranking scores, merge weights or None: the scores) over the non-prefix tokens (B, M)."""
        raise NotImplementedError

    def keeps_every_token(self, config: Any) -> bool:
        return config.keep_rate == 1.0

    def removing_nothing(self, config: Any) -> dict[str, Any]:
        return {"keep_rate": 1.0}

    def describe(self, config: Any, blocks: Optional[tuple[int, ...]] = None) -> str:
        where = "" if blocks is None else f" at blocks {tuple(blocks)}, merge {config.merge}"
        return f"{self.name}, keep rate {config.keep_rate:g}{where}"
