"""The comparison methods' model changes that live inside the blocks: the sequential adapter and
VPT-deep's prompts, one implementation each.

Both go into Sparse-Tuning's blocks (timm_vit.py), with or without a token reduction: a plain
model is patched first with reduction "none" and no Dense Adapters, which runs timm's own
block computation, so a method has one set of state-dict names whether it reduces or not (an
adapter trained with a reduction loads into the model without one, and back):
``blocks.N.ffn_adapter.{down,up}`` and ``blocks.prompts``.

AdaptFormer needs no code here: it is a Dense Adapter with one input and no sparsification
(methods/adaptformer.py). LoRA is Hugging Face peft's (methods/lora.py).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from ..core.config import SparseTuningConfig
from ..errors import UserError
from .timm_vit import SparseTuningBlocks, patch_vit


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


def _blocks(model: VisionTransformer) -> SparseTuningBlocks:
    """The model's blocks as Sparse-Tuning's: patched now (every token kept, no Dense Adapters)
    for a plain ViT, as they are for one a reduction patched first."""
    if not isinstance(model.blocks, SparseTuningBlocks):
        patch_vit(model, SparseTuningConfig(reduction="none", adapters=False))
    blocks = model.blocks
    if blocks.prompts is not None or any(blk.ffn_adapter is not None for blk in blocks) \
            or any(blk.adapter is not None for blk in blocks):
        raise UserError("this model already has a method's adapters or prompts; apply one method")
    return blocks


def add_sequential_adapters(model: VisionTransformer, bottleneck: int) -> list[nn.Module]:
    """Houlsby's adapter on each FFN's output, inside the residual branch; returned in block order."""
    blocks = _blocks(model)
    ref = next(model.parameters())
    for blk in blocks:
        blk.ffn_adapter = BottleneckAdapter(model.embed_dim, bottleneck, device=ref.device, dtype=ref.dtype)
    return [blk.ffn_adapter for blk in blocks]


def add_deep_prompts(model: VisionTransformer, num_prompts: int) -> nn.Parameter:
    """The (depth, n, C) prompts, protected prefix tokens that no reduction removes or merges."""
    if num_prompts < 1:
        raise UserError(f"prompts={num_prompts}: expected at least 1 prompt token")
    blocks = _blocks(model)
    ref = next(model.parameters())
    blocks.st.num_prefix += num_prompts
    blocks.st.num_prompts = num_prompts
    # VPT's initialisation: uniform in +-sqrt(6 / (fan_in + fan_out)) of a patch projection.
    patch_dim = model.patch_embed.proj.weight[0].numel()
    bound = (6.0 / (patch_dim + model.embed_dim)) ** 0.5
    blocks.prompts = nn.Parameter(torch.empty(len(blocks), num_prompts, model.embed_dim, device=ref.device,
                                              dtype=ref.dtype).uniform_(-bound, bound))
    return blocks.prompts
