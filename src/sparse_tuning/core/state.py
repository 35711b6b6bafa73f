"""``model.sparse_tuning``: a patched model's config, runtime knobs and what its last forward did.

Host-independent: a host gives it the blocks container (whose blocks carry ``adapter``) and the
attention modules (each with timm's ``fused_attn`` switch, which every host's attention honours).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

from .config import SparseTuningConfig, check_keep_rate
from .sparsify import SparsifyStep, original_positions


class SparseTuningState:
    """``model.sparse_tuning``: the config, the runtime knobs and what the last forward did."""

    def __init__(self, config: SparseTuningConfig, sparsify_at: tuple[int, ...], num_prefix: int,
                 blocks: nn.Sequential, attention: Sequence[nn.Module]) -> None:
        self.config = config
        self.sparsify_at = sparsify_at
        # Tokens no reduction removes, at the front of the sequence the blocks see: the model's
        # prefix tokens, then VPT's prompts (num_prompts of them) when --method vpt reduces.
        self.num_prefix = num_prefix
        self.num_prompts = 0
        self.grad_checkpointing = False
        # Pass earlier adapter outputs on in factored form (FactoredOutput): the same arithmetic
        # with b+1 numbers per token instead of C. False runs the reference formulation, which
        # the FLOP counter uses and the parity tests compare against.
        self.factored_history = True
        self._blocks = blocks
        self._attention = list(attention)
        self.last_plans: list = []                     # per block: its reduction plan, or None
        self.last_tokens: list[tuple[int, int]] = []   # (tokens in, tokens out) per block
        self.last_num_patches = 0
        self.last_batch_size = 0
        self.last_steps_device: Optional[torch.device] = None

    @property
    def keep_rate(self) -> float:
        return self.config.keep_rate

    @keep_rate.setter
    def keep_rate(self, value: float) -> None:
        check_keep_rate(value)
        self.config.keep_rate = float(value)

    @property
    def fused_attn(self) -> bool:
        return all(attn.fused_attn for attn in self._attention)

    @fused_attn.setter
    def fused_attn(self, value: bool) -> None:
        # timm's own per-module switch; the sparsifying blocks read it too.
        for attn in self._attention:
            attn.fused_attn = bool(value)

    def adapters(self) -> list[nn.Module]:
        """The Dense Adapters, in block order (none for token sparsification alone)."""
        return [blk.adapter for blk in self._blocks if blk.adapter is not None]

    @property
    def depth(self) -> int:
        return len(self._blocks)

    def record(self, plans: list, tokens: list[tuple[int, int]], num_tokens: int, batch_size: int,
               device: torch.device) -> None:
        """What a forward did (the host calls it after the last block): each block's plan, detached,
        its token counts in and out, and the input's length and batch size."""
        self.last_plans, self.last_tokens = plans, tokens
        self.last_num_patches, self.last_batch_size = num_tokens - self.num_prefix, batch_size
        self.last_steps_device = device

    @property
    def last_steps(self) -> list[Optional[SparsifyStep]]:
        """The keep rule's step at each block of ``sparsify_at`` (None where it kept every token)."""
        return [getattr(self.last_plans[i], "step", None) if i < len(self.last_plans) else None
                for i in self.sparsify_at]

    def _check_forward(self) -> None:
        if not self.last_batch_size:
            raise RuntimeError("no forward pass has run since Sparse-Tuning was applied")

    def token_sources(self) -> list[torch.Tensor]:
        """After each block, the token holding each original patch (B, num_patches): an index into
        that block's output sequence; -1 where a rule dropped the patch. Any rule (ToMe's merges,
        a keep rule's fused token), composed from the plans."""
        from .reduction import compose_sources

        self._check_forward()
        n = self.num_prefix + self.last_num_patches
        per_block = compose_sources(self.last_plans, n, self.last_batch_size, device=self.last_steps_device)
        return [where[:, self.num_prefix:] for where in per_block]

    def kept_tokens(self) -> list[torch.Tensor]:
        self._check_forward()
        return original_positions(self.last_steps, self.last_num_patches, self.last_batch_size,
                                  device=self.last_steps_device)

    def __repr__(self) -> str:
        return f"SparseTuningState(sparsify_at={self.sparsify_at}, config={self.config})"
