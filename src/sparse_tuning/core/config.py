"""The Sparse-Tuning configuration: one dataclass, validated before any work starts."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from ..errors import UserError

if TYPE_CHECKING:
    from .reduction import Rule

Fusion = Literal["down-sum", "input-sum", "up-sum"]
Merge = Literal["mean", "sum", "drop"]
FUSIONS, MERGES = get_args(Fusion), get_args(Merge)

# The paper's positions for a 12-block ViT: after its 4th, 7th and 10th blocks (0-based 3, 6, 9).
PAPER_DEPTH = 12
PAPER_SPARSIFY_AT = (3, 6, 9)


@dataclass
class SparseTuningConfig:
    # Share of the non-prefix tokens each sparsification step keeps: ceil(keep_rate * M), in (0, 1].
    keep_rate: float = 0.7
    # 0-based block indices that sparsify after their attention; unset: (3, 6, 9) scaled to the depth.
    sparsify_at: tuple[int, ...] | None = None
    # Hidden width b of each Dense Adapter (32 in the paper, 8 on VTAB-1K).
    bottleneck: int = 32
    # Multiplier s on the adapter output added to the block output.
    scale: float = 1.0
    # Which earlier adapters feed the adapter of block n: d in dense_inputs means a_{n-d} (n >= d).
    dense_inputs: tuple[int, ...] = (1, 3)
    # How the adapter's inputs are fused: project each then sum (the method), sum then project,
    # or a whole adapter per input with the outputs summed.
    fusion: Fusion = "down-sum"
    # What happens to the tokens not kept: one score-weighted average token ("mean", the paper),
    # one score-weighted sum token ("sum", EViT's code), or nothing ("drop").
    merge: Merge = "mean"
    # Dense Adapters beside the FFNs; --no-adapters gives token sparsification alone ("TS only").
    adapters: bool = True
    # How tokens are reduced: a rule of core/rules/ (rule_names()): top-k by the class token's
    # attention at sparsify_at (the method), ToMe's bipartite merging at every block, a random
    # keep_rate share at sparsify_at (the control for the ranking), ... or none. Methods outside
    # the Sparse-Tuning family reduce only when given.
    reduction: str = "class-attention"
    # ToMe: tokens merged away in each block; one number for every block, or one per block.
    tome_r: tuple[int, ...] = (8,)
    # ToMe: add log(token size) to the attention logits, so a merged token weighs what it holds.
    proportional_attention: bool = True

    def __post_init__(self) -> None:
        # Lists from JSON or a CLI become tuples so configs compare and hash the same way.
        if self.sparsify_at is not None:
            self.sparsify_at = tuple(self.sparsify_at)
        self.dense_inputs = tuple(self.dense_inputs)
        self.tome_r = (self.tome_r,) if _is_int(self.tome_r) else tuple(self.tome_r)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the bad field and what is allowed."""
        check_keep_rate(self.keep_rate)
        if self.sparsify_at is not None:
            if not all(_is_int(i) and i >= 0 for i in self.sparsify_at):
                raise UserError(f"sparsify_at={self.sparsify_at!r}: expected non-negative block indices")
            if len(set(self.sparsify_at)) != len(self.sparsify_at):
                raise UserError(f"sparsify_at={self.sparsify_at!r}: block indices must be distinct")
        if not _is_int(self.bottleneck) or self.bottleneck < 1:
            raise UserError(f"bottleneck={self.bottleneck!r}: expected an integer >= 1")
        if not isinstance(self.scale, (int, float)) or not math.isfinite(self.scale):
            raise UserError(f"scale={self.scale!r}: expected a finite number")
        if not all(_is_int(d) and d >= 1 for d in self.dense_inputs):
            raise UserError(f"dense_inputs={self.dense_inputs!r}: expected distances >= 1 to earlier adapters")
        if len(set(self.dense_inputs)) != len(self.dense_inputs):
            raise UserError(f"dense_inputs={self.dense_inputs!r}: distances must be distinct")
        if self.fusion not in FUSIONS:
            raise UserError(f"fusion={self.fusion!r}: expected one of {', '.join(FUSIONS)}")
        if self.merge not in MERGES:
            raise UserError(f"merge={self.merge!r}: expected one of {', '.join(MERGES)}")
        if not isinstance(self.adapters, bool):
            raise UserError(f"adapters={self.adapters!r}: expected True or False")
        self.rule  # an unknown name raises, naming the registered rules
        if not self.tome_r or not all(_is_int(r) and r >= 0 for r in self.tome_r):
            raise UserError(f"tome_r={self.tome_r!r}: expected token counts >= 0, one or one per block")
        if not isinstance(self.proportional_attention, bool):
            raise UserError(f"proportional_attention={self.proportional_attention!r}: expected True or False")

    def resolve_sparsify_at(self, depth: int) -> tuple[int, ...]:
        """The sparsifying block indices for a ViT of `depth` blocks, checked against it."""
        if self.sparsify_at is None:
            # Scale the paper's (3, 6, 9) of 12 blocks: (6, 12, 18) for 24, (2, 4, 6) for 8.
            at = tuple(sorted({i * depth // PAPER_DEPTH for i in PAPER_SPARSIFY_AT}))
        else:
            at = tuple(sorted(self.sparsify_at))
        bad = [i for i in at if i >= depth]
        if bad:
            raise UserError(
                f"sparsify_at={self.sparsify_at!r}: block {bad[0]} does not exist; "
                f"this model has blocks 0..{depth - 1}")
        return at

    @property
    def rule(self) -> "Rule":
        """The reduction rule object (core/reduction.py) named by ``reduction``."""
        from .reduction import get_rule

        return get_rule(self.reduction)

    def resolve_tome_r(self, depth: int) -> tuple[int, ...]:
        """Tokens ToMe merges away in each of `depth` blocks."""
        r = (self.tome_r,) if _is_int(self.tome_r) else tuple(self.tome_r)  # an int set at runtime, as ToMe's model.r
        if len(r) == 1:
            return r * depth
        if len(r) != depth:
            raise UserError(f"tome_r={self.tome_r!r}: expected one number or {depth} (one per block)")
        return r

    def reduces_at(self, depth: int) -> tuple[int, ...]:
        """The blocks that keep a keep_rate share of the tokens (the keep rules: class-attention,
        random, ...); none for a rule without a keep rate (tome, none). Checked against the depth
        (a ToMe r per block too)."""
        rule = self.rule
        blocks = rule.blocks(self, depth)
        return blocks if rule.has_keep_rate else ()

    @property
    def keeps_every_token(self) -> bool:
        """No rule, or a keep rule at keep rate 1 (ToMe counts as a reduction whatever its r, a
        runtime knob)."""
        return self.rule.keeps_every_token(self)

    def describe_reduction(self, sparsify_at: tuple[int, ...] | None = None) -> str:
        """The token reduction in words, for summaries: 'ToMe, r 4 per block', 'class-attention,
        keep rate 0.7' (with the resolved blocks and merge when ``sparsify_at`` is given)."""
        if self.keeps_every_token:
            return "every token kept"
        return self.rule.describe(self, sparsify_at)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v, tuple) else v)
                for f in dataclasses.fields(self) for v in [getattr(self, f.name)]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SparseTuningConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown Sparse-Tuning config field(s): {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(known))}")
        return cls(**d)


def check_keep_rate(keep_rate: float) -> None:
    if isinstance(keep_rate, bool) or not isinstance(keep_rate, (int, float)) or not 0 < keep_rate <= 1:
        raise UserError(f"keep_rate={keep_rate!r}: expected a number in (0, 1]")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
