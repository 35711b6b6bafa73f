"""Token sparsification as pure tensor functions (no timm, no training).

A sparsification step scores the non-prefix tokens by the attention the class token pays them
(averaged over heads), keeps the top ``k = ceil(keep_rate * M)`` and merges the others into one
token. The step is planned once (``plan_step``, ``keep_plan``) and then applied (``apply_step``,
``KeepPlan.apply``) to the tokens and to every earlier adapter output that must follow the same
sequence. The keep rules (core/rules/) rank by their own scores; the random one draws them.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from ..errors import UserError


class SparsifyStep(NamedTuple):
    keep_idx: Tensor                  # (B, k) kept non-prefix positions, ascending
    merge_weights: Optional[Tensor]   # (B, M) weight of each token in the fused one; 0 for kept; None: drop

    def detached(self) -> "SparsifyStep":
        w = self.merge_weights
        return SparsifyStep(self.keep_idx, None if w is None else w.detach())


def keep_count(keep_rate: float, num_tokens: int) -> int:
    """k = ceil(keep_rate * M), at least 1.

    The small tolerance keeps float error from rounding up an exact product
    (0.7 * 140 is 98.00000000000001 in floating point, and must give 98).
    """
    k = math.ceil(keep_rate * num_tokens - 1e-6)
    return min(max(k, 1), num_tokens)


def class_attention_scores(q: Tensor, k: Tensor, scale: float) -> Tensor:
    """Head-averaged attention of the first (class) query over all keys.

    q, k: (B, H, N, D). Returns (B, N). Only the class row is formed: O(N) work, so a block can
    keep its fused attention kernel and still get the scores the method needs.
    """
    logits = (q[:, :, :1] * scale) @ k.transpose(-2, -1)  # (B, H, 1, N), in the compute dtype
    return logits.softmax(dim=-1, dtype=torch.float32)[:, :, 0].mean(dim=1)


def plan_step(scores: Tensor, k: int, merge: str, merge_scores: Optional[Tensor] = None) -> SparsifyStep:
    """Choose the kept tokens and the merge weights from non-prefix scores (B, M); the merge
    weighs the others by ``merge_scores`` where given (the random rule: all alike)."""
    B, M = scores.shape
    keep_idx = scores.topk(k, dim=1).indices.sort(dim=1).values
    if merge == "drop":
        return SparsifyStep(keep_idx, None)
    # Static shapes: weights over all M tokens, zeroed at the kept ones (no boolean indexing).
    weights = (scores if merge_scores is None else merge_scores).scatter(1, keep_idx, 0.0)
    if merge == "mean":
        weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
    elif merge != "sum":
        raise UserError(f"merge={merge!r}: expected one of mean, sum, drop")
    return SparsifyStep(keep_idx, weights)


def apply_step(x: Tensor, step: SparsifyStep, num_prefix: int) -> Tensor:
    """[prefix tokens, kept tokens, fused token] from x (B, N, C)."""
    B, N, C = x.shape
    prefix, tokens = x[:, :num_prefix], x[:, num_prefix:]
    kept = tokens.gather(1, step.keep_idx.unsqueeze(-1).expand(-1, -1, C))
    if step.merge_weights is None:
        return torch.cat([prefix, kept], dim=1)
    fused = step.merge_weights.unsqueeze(1).to(tokens.dtype) @ tokens  # (B, 1, C)
    return torch.cat([prefix, kept, fused], dim=1)


class KeepPlan(NamedTuple):
    """A keep rule's plan for one block (core/reduction.py's protocol): its step, with the prefix
    tokens it leaves alone and the length of the sequence it reduces."""
    step: SparsifyStep
    num_prefix: int
    num_tokens: int   # N, prefix tokens included

    def apply(self, x: Tensor) -> Tensor:
        return apply_step(x, self.step, self.num_prefix)

    def sizes_after(self, size: Optional[Tensor]) -> Optional[Tensor]:
        return None  # keep rules track no sizes (no proportional attention follows them)

    def sources(self) -> Tensor:
        keep_idx, P = self.step.keep_idx, self.num_prefix
        B, k = keep_idx.shape
        fused = P + k if self.step.merge_weights is not None else -1
        rest = keep_idx.new_full((B, self.num_tokens - P), fused)
        rest.scatter_(1, keep_idx, torch.arange(P, P + k, device=keep_idx.device).expand(B, -1))
        return torch.cat([torch.arange(P, device=keep_idx.device).expand(B, -1), rest], dim=1)

    def flops(self, channels: int) -> int:
        """The fused token's weighted sum, (B, 1, M) @ (B, M, C); kept tokens are gathered, not computed."""
        B, M = self.step.keep_idx.shape[0], self.num_tokens - self.num_prefix
        return 0 if self.step.merge_weights is None else B * M * channels

    def detached(self) -> "KeepPlan":
        return KeepPlan(self.step.detached(), self.num_prefix, self.num_tokens)


def keep_plan(x: Tensor, scores: Optional[Tensor], keep_rate: float, num_prefix: int, merge: str,
              merge_scores: Optional[Tensor] = None) -> Optional[KeepPlan]:
    """A keep rule's plan for x (B, N, C): the top ceil(keep_rate * M) tokens by ``scores`` (B, M)
    over the non-prefix tokens, the others merged by ``merge`` weighted by ``merge_scores`` (by
    the scores where not given); None when every token is kept."""
    B, N, C = x.shape
    k = keep_count(keep_rate, N - num_prefix)
    if k == N - num_prefix:
        return None
    return KeepPlan(plan_step(scores, k, merge, merge_scores), num_prefix, N)


def original_positions(steps: Sequence[Optional[SparsifyStep]], num_patches: int,
                       batch_size: int, device=None) -> list[Tensor]:
    """Original patch-grid index of the kept tokens after each step; a fused token is -1.

    Composed after the forward from the kept indices, so the forward itself does no
    bookkeeping beyond remembering them.
    """
    pos = torch.arange(num_patches, device=device).expand(batch_size, -1)
    out = []
    for step in steps:
        if step is None:  # nothing was removed: every current token is kept
            out.append(pos.clone())
            continue
        kept = pos.gather(1, step.keep_idx)
        out.append(kept)
        if step.merge_weights is not None:
            pos = torch.cat([kept, kept.new_full((batch_size, 1), -1)], dim=1)
        else:
            pos = kept
    return out
