"""The comparison methods' model changes, each a small patch of timm's ViT.

Under a token reduction the model is Sparse-Tuning-patched first (methods/base.py), and the
adapters or prompts go into its blocks instead (timm_vit.py): their own blocks would replace
the ones that reduce.

AdaptFormer needs no code here: it is a Dense Adapter with one input and no sparsification
(methods/adaptformer.py). LoRA is Hugging Face peft's (methods/lora.py).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.models.vision_transformer import Block, VisionTransformer

from .timm_vit import SparseTuningBlocks, check_supported, place_prompts


class BottleneckAdapter(nn.Module):
    """down -> ReLU -> up, the up-projection zero-initialised (a fresh adapter adds nothing)."""

    def __init__(self, dim: int, bottleneck: int, device=None, dtype=None) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck, device=device, dtype=dtype)
        self.up = nn.Linear(bottleneck, dim, device=device, dtype=dtype)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.relu(self.down(x)))


class SequentialAdapterBlock(Block):
    """Houlsby-style: an adapter after the FFN, on its output, inside the residual branch."""

    adapter: BottleneckAdapter

    def forward(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
        h = self.ls2(self.mlp(self.norm2(x)))
        return x + self.drop_path2(h + self.adapter(h))


def _reduced(model: VisionTransformer) -> bool:
    """The model runs a token reduction (patched first); otherwise it must be a plain ViT."""
    if isinstance(model.blocks, SparseTuningBlocks):
        if model.blocks.prompts is not None or any(blk.ffn_adapter is not None for blk in model.blocks):
            raise ValueError("this model already has a comparison method's adapters or prompts; apply one method")
        return True
    check_supported(model)
    return False


def add_sequential_adapters(model: VisionTransformer, bottleneck: int) -> list[nn.Module]:
    """One adapter per block, returned in block order."""
    reduced = _reduced(model)
    ref = next(model.parameters())
    adapters = []
    for blk in model.blocks:
        adapter = BottleneckAdapter(model.embed_dim, bottleneck, device=ref.device, dtype=ref.dtype)
        if reduced:
            blk.ffn_adapter = adapter
        else:
            blk.__class__ = SequentialAdapterBlock
            blk.adapter = adapter
        adapters.append(adapter)
    return adapters


class PromptedBlocks(nn.Sequential):
    """VPT-deep: before each block, the prompt positions (after the prefix tokens) hold that
    block's own learnable prompts; they are removed after the last block, so pooling and head
    see the usual sequence.

    timm's gradient checkpointing (checkpoint_seq) would call the blocks one by one and skip the
    prompts, so the flag is this container's, honoured per block (TimmHost.set_grad_checkpointing)."""

    prompts: nn.Parameter  # (depth, num_prompts, C)
    num_prefix: int
    grad_checkpointing: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        P, n = self.num_prefix, self.prompts.shape[1]
        for i, blk in enumerate(self):
            x = place_prompts(x, self.prompts[i], P, replace=i > 0)
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return torch.cat([x[:, :P], x[:, P + n:]], dim=1)


def add_deep_prompts(model: VisionTransformer, num_prompts: int) -> nn.Parameter:
    """The (depth, n, C) prompts; under a reduction they join the protected prefix tokens."""
    reduced = _reduced(model)
    if num_prompts < 1:
        raise ValueError(f"prompts={num_prompts}: expected at least 1 prompt token")
    ref = next(model.parameters())
    blocks = model.blocks
    if reduced:
        blocks.st.num_prefix += num_prompts
        blocks.st.num_prompts = num_prompts
    else:
        blocks.__class__ = PromptedBlocks
        blocks.num_prefix = model.num_prefix_tokens
        blocks.grad_checkpointing, model.grad_checkpointing = model.grad_checkpointing, False
    # VPT's initialisation: uniform in +-sqrt(6 / (fan_in + fan_out)) of a patch projection.
    patch_dim = model.patch_embed.proj.weight[0].numel()
    bound = (6.0 / (patch_dim + model.embed_dim)) ** 0.5
    blocks.prompts = nn.Parameter(torch.empty(len(blocks), num_prompts, model.embed_dim, device=ref.device,
                                              dtype=ref.dtype).uniform_(-bound, bound))
    return blocks.prompts
