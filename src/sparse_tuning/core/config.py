"""The Sparse-Tuning configuration: one dataclass, validated before any work starts."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

Fusion = Literal["down-sum", "input-sum", "up-sum"]
Merge = Literal["mean", "sum", "drop"]
Reduction = Literal["class-attention", "tome", "random", "none"]
FUSIONS, MERGES, REDUCTIONS = get_args(Fusion), get_args(Merge), get_args(Reduction)

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
    # How tokens are reduced: top-k by the class token's attention at sparsify_at (the method),
    # ToMe's bipartite merging at every block, a random keep_rate share at sparsify_at (the
    # control for the ranking), or none. Methods outside the Sparse-Tuning family reduce only when given.
    reduction: Reduction = "class-attention"
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
                raise ValueError(f"sparsify_at={self.sparsify_at!r}: expected non-negative block indices")
            if len(set(self.sparsify_at)) != len(self.sparsify_at):
                raise ValueError(f"sparsify_at={self.sparsify_at!r}: block indices must be distinct")
        if not _is_int(self.bottleneck) or self.bottleneck < 1:
            raise ValueError(f"bottleneck={self.bottleneck!r}: expected an integer >= 1")
        if not isinstance(self.scale, (int, float)) or not math.isfinite(self.scale):
            raise ValueError(f"scale={self.scale!r}: expected a finite number")
        if not all(_is_int(d) and d >= 1 for d in self.dense_inputs):
            raise ValueError(f"dense_inputs={self.dense_inputs!r}: expected distances >= 1 to earlier adapters")
        if len(set(self.dense_inputs)) != len(self.dense_inputs):
            raise ValueError(f"dense_inputs={self.dense_inputs!r}: distances must be distinct")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion={self.fusion!r}: expected one of {', '.join(FUSIONS)}")
        if self.merge not in MERGES:
            raise ValueError(f"merge={self.merge!r}: expected one of {', '.join(MERGES)}")
        if not isinstance(self.adapters, bool):
            raise ValueError(f"adapters={self.adapters!r}: expected True or False")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction={self.reduction!r}: expected one of {', '.join(REDUCTIONS)}")
        if not self.tome_r or not all(_is_int(r) and r >= 0 for r in self.tome_r):
            raise ValueError(f"tome_r={self.tome_r!r}: expected token counts >= 0, one or one per block")
        if not isinstance(self.proportional_attention, bool):
            raise ValueError(f"proportional_attention={self.proportional_attention!r}: expected True or False")

    def resolve_sparsify_at(self, depth: int) -> tuple[int, ...]:
        """The sparsifying block indices for a ViT of `depth` blocks, checked against it."""
        if self.sparsify_at is None:
            # Scale the paper's (3, 6, 9) of 12 blocks: (6, 12, 18) for 24, (2, 4, 6) for 8.
            at = tuple(sorted({i * depth // PAPER_DEPTH for i in PAPER_SPARSIFY_AT}))
        else:
            at = tuple(sorted(self.sparsify_at))
        bad = [i for i in at if i >= depth]
        if bad:
            raise ValueError(
                f"sparsify_at={self.sparsify_at!r}: block {bad[0]} does not exist; "
                f"this model has blocks 0..{depth - 1}")
        return at

    def resolve_tome_r(self, depth: int) -> tuple[int, ...]:
        """Tokens ToMe merges away in each of `depth` blocks (0 where it does not reduce)."""
        if self.reduction != "tome":
            return (0,) * depth
        r = (self.tome_r,) if _is_int(self.tome_r) else tuple(self.tome_r)  # an int set at runtime, as ToMe's model.r
        if len(r) == 1:
            return r * depth
        if len(r) != depth:
            raise ValueError(f"tome_r={self.tome_r!r}: expected one number or {depth} (one per block)")
        return r

    def reduces_at(self, depth: int) -> tuple[int, ...]:
        """The blocks that rank and keep tokens (class-attention, random); none for tome and none."""
        return self.resolve_sparsify_at(depth) if self.reduction in ("class-attention", "random") else ()

    @property
    def keeps_every_token(self) -> bool:
        """No rule, or a ranking rule at keep rate 1 (ToMe counts as a reduction whatever its r, a
        runtime knob)."""
        return self.reduction == "none" or (self.reduction != "tome" and self.keep_rate == 1.0)

    def describe_reduction(self, sparsify_at: tuple[int, ...] | None = None) -> str:
        """The token reduction in words, for summaries: 'ToMe, r 4 per block', 'class-attention,
        keep rate 0.7' (with the resolved blocks and merge when ``sparsify_at`` is given)."""
        if self.keeps_every_token:
            return "every token kept"
        if self.reduction == "tome":
            r = self.tome_r[0] if len(self.tome_r) == 1 else list(self.tome_r)
            return f"ToMe, r {r} per block" + ("" if self.proportional_attention else ", no proportional attention")
        where = "" if sparsify_at is None else f" at blocks {tuple(sparsify_at)}, merge {self.merge}"
        return f"{self.reduction}, keep rate {self.keep_rate:g}{where}"

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
            raise ValueError(f"unknown Sparse-Tuning config field(s): {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        return cls(**d)


def check_keep_rate(keep_rate: float) -> None:
    if isinstance(keep_rate, bool) or not isinstance(keep_rate, (int, float)) or not 0 < keep_rate <= 1:
        raise ValueError(f"keep_rate={keep_rate!r}: expected a number in (0, 1]")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
