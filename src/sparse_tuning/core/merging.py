"""ToMe's token merging as pure tensor functions (no timm, no training): bipartite soft matching
on the attention keys, size-weighted averages, and the sizes that proportional attention reads.

Bolya et al., "Token Merging: Your ViT but Faster" (ICLR 2023). Per block, after attention:
the tokens alternate into sets A (even positions) and B (odd); each A token's most similar B
token (cosine of the head-averaged keys) is its edge; the r A tokens with the strongest edges
merge into their B partners, each merged token the size-weighted average of what it holds.
Prefix tokens (class, distillation, registers) never merge: their rows and columns are barred
from matching, and they come first in the output in their original order (ToMe's own layout
for one and two prefix tokens).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor


class MergePlan(NamedTuple):
    """Which tokens merge where, for one block: positions within A and B (B, ...)."""
    unm_idx: Tensor   # (B, Ta - r) the A tokens left alone, ascending (prefix ones first)
    src_idx: Tensor   # (B, r) the A tokens merged away
    dst_idx: Tensor   # (B, r) the B token each of them joins
    num_prefix: int


def bipartite_plan(metric: Tensor, r: int, num_prefix: int) -> Optional[MergePlan]:
    """Plan ToMe's merge of r tokens from the metric (B, N, D); None when nothing can merge.

    At most half of the non-prefix tokens can merge in one block (ToMe's bound)."""
    B, N, D = metric.shape
    r = min(r, (N - num_prefix) // 2)
    if r <= 0:
        return None
    with torch.no_grad():  # a choice, not a function to differentiate (as in ToMe)
        metric = metric / metric.norm(dim=-1, keepdim=True)
        a, b = metric[:, ::2], metric[:, 1::2]
        scores = a @ b.transpose(-1, -2)                              # (B, Ta, Tb)
        barred = torch.finfo(scores.dtype).min
        scores[:, : (num_prefix + 1) // 2, :] = barred                # prefix tokens in A: never sources
        scores[:, :, : num_prefix // 2] = barred                      # prefix tokens in B: never targets
        node_max, node_idx = scores.max(dim=-1)                       # (B, Ta)
        edge_idx = node_max.argsort(dim=-1, descending=True)
        unm_idx = edge_idx[:, r:].sort(dim=-1).values
        src_idx = edge_idx[:, :r]
        dst_idx = node_idx.gather(1, src_idx)
    return MergePlan(unm_idx, src_idx, dst_idx, num_prefix)


def merge_tokens(x: Tensor, plan: MergePlan, mode: str = "sum") -> Tensor:
    """x (B, N, C) -> (B, N - r, C): sources reduced into their destinations ("sum", "amax",
    "mean"); the output is [prefix tokens, unmerged A tokens, B tokens]."""
    B, N, C = x.shape
    src, dst = x[:, ::2], x[:, 1::2]
    r = plan.src_idx.shape[1]
    unm = src.gather(1, plan.unm_idx.unsqueeze(-1).expand(-1, -1, C))
    moved = src.gather(1, plan.src_idx.unsqueeze(-1).expand(-1, -1, C))
    dst = dst.scatter_reduce(1, plan.dst_idx.unsqueeze(-1).expand(-1, r, C), moved, reduce=mode)
    pa, pb = (plan.num_prefix + 1) // 2, plan.num_prefix // 2  # prefix tokens in A and in B
    prefix = torch.stack([unm[:, :pb], dst[:, :pb]], dim=2).flatten(1, 2)  # a0 b0 a1 b1 ...
    if pa > pb:
        prefix = torch.cat([prefix, unm[:, pb:pa]], dim=1)
    return torch.cat([prefix, unm[:, pa:], dst[:, pb:]], dim=1)


class MergeStep(NamedTuple):
    """A planned merge with the token sizes around it: a tensor that follows the tokens (an
    earlier adapter output) is merged with the same size weights as the tokens themselves."""
    plan: MergePlan
    size: Tensor       # (B, N, 1) sizes before: original patches each token holds
    new_size: Tensor   # (B, N - r, 1)

    def apply(self, x: Tensor) -> Tensor:
        """The size-weighted merge of x (B, N, C), linear in x."""
        return merge_tokens(x * self.size.to(x.dtype), self.plan) / self.new_size.to(x.dtype)

    def detached(self) -> "MergeStep":
        return MergeStep(self.plan, self.size.detach(), self.new_size.detach())

    # The rest of core/reduction.py's plan protocol:
    def sizes_after(self, size: Optional[Tensor]) -> Tensor:
        return self.new_size

    def sources(self) -> Tensor:
        """For each input token, the output token holding it: merging a one-hot per token
        ("amax") marks, in each output token, the input tokens it holds."""
        B, N, _ = self.size.shape
        onehot = torch.eye(N, device=self.size.device).expand(B, -1, -1)
        return merge_tokens(onehot, self.plan, mode="amax").argmax(dim=1)

    def flops(self, channels: int) -> int:
        """No matrix product: the merge is a size-weighted scatter-add, elementwise work that the
        FLOP count (tools/flops.py) leaves out everywhere."""
        return 0


def merge_plan(x: Tensor, metric: Tensor, size: Optional[Tensor], r: int, num_prefix: int) -> Optional[MergeStep]:
    """ToMe's merge of r tokens of x (B, N, C) by metric (B, N, D), planned with the sizes before
    it (B, N, 1) or None (all 1); None: nothing merges."""
    plan = bipartite_plan(metric, r, num_prefix)
    if plan is None:
        return None
    if size is None:
        size = x.new_ones(x.shape[0], x.shape[1], 1)
    return MergeStep(plan, size, merge_tokens(size, plan))
