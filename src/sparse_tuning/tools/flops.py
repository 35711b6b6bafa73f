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

from ..core.state import SparseTuningState
from ..errors import UserError
from ..hosts import host_for


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
    try:
        mods = host_for(model).attention_modules(model)
    except ValueError:  # a module no host serves: its own switches, if it has any
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
        raise UserError(f"input_size={input_size!r}: expected (channels, height, width)")
    try:
        host = host_for(model)
    except ValueError:  # a module no host serves: counted as it is, nothing to check
        return
    host.check_input_size(model, input_size)


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
        tokens = [(n, n)] * host_for(model).depth(model)
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
    host = host_for(model)
    ph, pw = host.patch_size(model)
    return (H // ph) * (W // pw) + host.num_prefix_tokens(model)


def model_cost(model: str, method: str = "sparse-tuning", img_size: Optional[int] = None,
               num_classes: Optional[int] = None, keep_rate: Optional[float] = None,
               frames: Optional[int] = None, video_tokens: str = "joint", tubelet: int = 2, task: str = "classify",
               **sparse_tuning_fields) -> dict:
    """GFLOPs, parameters and tokens per block of a model by name with a method applied ("dense":
    the plain model), next to the plain model's GFLOPs; no weights (meta device). With ``frames``,
    one video clip in the given token layout; with ``task="segment"``, the model with its
    segmentation head (``num_classes`` classes, the backbone's classifier removed), both counts."""
    from ..api import count_params
    from ..hosts import build_architecture
    from ..methods import method_config, prepare

    if frames is not None and frames < 1:
        raise UserError(f"frames={frames}: a clip has at least one frame")
    if method == "dense":  # the plain model: nothing applied, so nothing to configure
        if keep_rate is not None or sparse_tuning_fields.get("reduction", "none") != "none":
            raise UserError("--method dense is the plain model: --keep-rate and --reduction do not apply to it")
        config = None
    else:
        config = method_config(method, keep_rate, **sparse_tuning_fields)
    from ..training.tasks import get_task

    segment = get_task(task)
    if segment.name == "segment" and (frames or not num_classes):
        raise UserError("--task segment counts images with a head of --num-classes N classes (N >= 2)")
    vit = build_architecture(model, img_size, segment.backbone_classes(num_classes) if num_classes else None)
    host = host_for(vit)
    host.check_supported(vit)
    size = host.input_size(vit)
    out: dict = {"model": model, "method": method}
    if frames:
        video = lambda: host.video_model(vit, frames, video_tokens, tubelet)
        dense = count_model_flops(video(), (1, size[0], frames, *size[1:]))
        if method != "dense":
            prepare(vit, method, config)
        gflops = count_model_flops(video(), (1, size[0], frames, *size[1:]))
        out.update(frames=frames, video_tokens=video_tokens, tubelet=tubelet, gflops=gflops, dense_gflops=dense)
    else:
        with_head = lambda: count_model_flops(segment.model(vit, num_classes), (1, *size))
        dense = with_head() if segment.name == "segment" else flop_report(vit, size).gflops
        if method != "dense":
            prepare(vit, method, config)
        report = flop_report(vit, size)
        st = getattr(vit, "sparse_tuning", None)
        out.update(img_size=list(size[1:]), config=st.config.to_dict() if config is not None else None,
                   sparsify_at=list(st.sparsify_at) if config is not None else [], task=segment.name,
                   num_classes=num_classes,
                   gflops=with_head() if segment.name == "segment" else report.gflops, dense_gflops=dense,
                   tokens_per_block=[list(t) for t in report.tokens_per_block])
    out["params_total"], out["params_trainable"] = count_params(segment.model(vit, num_classes) if num_classes else vit)
    return out


def tokens_line(tokens) -> str:
    """'197 x3 | 197->140 | 140 x2 | ...': runs of equal blocks folded."""
    import itertools

    parts: list[str] = []
    for (n_in, n_out), run in itertools.groupby(tuple(t) for t in tokens):
        count = len(list(run))
        if n_in != n_out:
            parts += [f"{n_in}->{n_out}"] * count
        else:
            parts.append(f"{n_in} x{count}" if count > 1 else f"{n_in}")
    return " | ".join(parts)


def cost_text(cost: dict) -> str:
    """model_cost as the lines ``sparse-tuning flops`` prints."""
    share = f"{100 * cost['gflops'] / cost['dense_gflops']:.1f}% of dense {cost['dense_gflops']:.2f}"
    params = f"parameters   {cost['params_total']:,} total, {cost['params_trainable']:,} trainable"
    if "frames" in cost:
        layout = f"{cost['video_tokens']} tokens" + (f", tubelet {cost['tubelet']}" if cost["video_tokens"] == "joint" else "")
        return "\n".join([f"model        {cost['model']}, {cost['frames']} frames ({layout})",
                          f"method       {cost['method']}",
                          f"GFLOPs       {cost['gflops']:.2f} per clip  ({share})", params + " (image model)"])
    h, w = cost["img_size"]
    c = cost["config"]
    if c is not None:
        from ..core.config import SparseTuningConfig

        config = SparseTuningConfig.from_dict(c)
        method = (f"method       {cost['method']}: {config.describe_reduction(cost['sparsify_at'])}"
                  + (f", bottleneck {c['bottleneck']}" if c["adapters"] else ""))
    else:
        method = f"method       {cost['method']}" + (" (plain model)" if cost["method"] == "dense" else "")
    head = f", segmentation head of {cost['num_classes']} classes" if cost.get("task") == "segment" else ""
    return "\n".join([f"model        {cost['model']} at {h}x{w}{head}", method, f"GFLOPs       {cost['gflops']:.2f}  ({share})",
                      params, f"tokens       {tokens_line(cost['tokens_per_block'])}"])
