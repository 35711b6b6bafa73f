"""FLOP counting in the paper's convention: GFLOPs = 1e9 multiply-accumulates, batch 1.

torch's FlopCounterMode counts every matmul, Linear and convolution (in FLOPs = 2 MACs); we add
LayerNorm as fvcore counts it (5 per element with an affine, 4 without) and halve the total.
The count runs the reference formulation: attention in its eager form, so both attention
matmuls are counted the same way whichever path a model uses (the fused path's extra class-token
row, N*d per sparsifying block, under 0.01%, is left out), and Dense Adapters reading earlier
adapters' outputs as C-dimensional tensors, as the method defines them. The factored history a
model runs by default does slightly less, so the figures are the method's, not those of one
implementation's shortcuts.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .patch import SparseTuningState


def _layer_norm_flops(input_shape, normalized_shape, weight=None, bias=None, *args, out_shape=None, **kwargs) -> int:
    numel = 1
    for s in input_shape:
        numel *= s
    # fvcore: 5 MACs per element with an affine, 4 without; doubled here, halved with the rest.
    return 2 * numel * (5 if weight is not None else 4)


@dataclass
class FlopReport:
    gflops: float                          # 1e9 multiply-accumulates for one image
    tokens_per_block: list[tuple[int, int]]  # (tokens entering, tokens leaving) each block


@contextlib.contextmanager
def reference_formulation(model: nn.Module) -> Iterator[None]:
    """Temporarily switch every timm attention module to its explicit (eager) path and a
    Sparse-Tuning model's adapters to dense (unfactored) earlier outputs."""
    mods = [m for m in model.modules() if hasattr(m, "fused_attn")]
    saved = [m.fused_attn for m in mods]
    states = [m for m in model.modules() if isinstance(getattr(m, "sparse_tuning", None), SparseTuningState)]
    saved_history = [m.sparse_tuning.factored_history for m in states]
    try:
        for m in mods:
            m.fused_attn = False
        for m in states:
            m.sparse_tuning.factored_history = False
        yield
    finally:
        for m, v in zip(mods, saved):
            m.fused_attn = v
        for m, v in zip(states, saved_history):
            m.sparse_tuning.factored_history = v


def check_input_size(model: nn.Module, input_size: tuple[int, int, int]) -> None:
    """Raise ValueError if the model cannot take images of input_size (C, H, W)."""
    if len(input_size) != 3:
        raise ValueError(f"input_size={input_size!r}: expected (channels, height, width)")
    embed = getattr(model, "patch_embed", None)
    if embed is None:
        return
    C, H, W = input_size
    ph, pw = embed.patch_size
    if H % ph or W % pw:
        raise ValueError(f"image size {H}x{W} is not divisible by the patch size {ph}x{pw}")
    in_chans = embed.proj.in_channels
    if C != in_chans:
        raise ValueError(f"input has {C} channels; the model takes {in_chans}")
    dynamic = getattr(embed, "dynamic_img_size", False) or not getattr(embed, "strict_img_size", True)
    if not dynamic and (H, W) != tuple(embed.img_size):
        raise ValueError(
            f"image size {H}x{W} differs from the model's {embed.img_size[0]}x{embed.img_size[1]}; "
            "create the model with img_size=... (timm resamples the position embedding) "
            "or dynamic_img_size=True")


def flop_report(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224),
                device: Optional[torch.device] = None) -> FlopReport:
    """Count one forward of a (1, *input_size) input; works on the meta device (no weights)."""
    check_input_size(model, input_size)
    gflops = count_model_flops(model, (1, *input_size), device)
    st = getattr(model, "sparse_tuning", None)
    if isinstance(st, SparseTuningState):
        tokens = list(st.last_tokens)
    else:
        n = _num_tokens(model, input_size)
        tokens = [(n, n)] * len(getattr(model, "blocks", []))
    return FlopReport(gflops, tokens)


def count_model_flops(model: nn.Module, input_shape: tuple[int, ...], device: Optional[torch.device] = None) -> float:
    """GFLOPs (1e9 multiply-accumulates) of one forward of a zero input of `input_shape`."""
    ref = next(model.parameters())
    device = ref.device if device is None else device
    x = torch.zeros(input_shape, device=device, dtype=ref.dtype)
    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.native_layer_norm: _layer_norm_flops})
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), reference_formulation(model), counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2 / 1e9


def count_flops(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)) -> float:
    """GFLOPs (1e9 multiply-accumulates) of one image through the model at its current keep rate."""
    return flop_report(model, input_size).gflops


def _num_tokens(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    _, H, W = input_size
    ph, pw = model.patch_embed.patch_size
    return (H // ph) * (W // pw) + getattr(model, "num_prefix_tokens", 0)
