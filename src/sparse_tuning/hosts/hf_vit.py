"""Sparse-Tuning inside a Hugging Face transformers ViT: its layers change class, in place.

transformers' model forward loops over its own layers, so there is no container to own the
per-forward state as on timm: the first layer starts it on ``model.sparse_tuning`` and every
layer passes the adapter outputs on through it. The layer's own submodules and state-dict keys
stay (``save_pretrained`` of the backbone works); each layer gains ``adapter``.

Layer internals differ between transformers versions and are read from the installed modules:
5.x ``attention.{q,k,v,o}_proj`` and ``mlp.fc1/fc2``; 4.x ``attention.attention.{query,key,value}``,
``attention.output.dense``, ``intermediate`` and ``output.dense``.
"""
from __future__ import annotations

import dataclasses
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.adapter import DenseAdapter, FactoredOutput
from ..core.config import SparseTuningConfig
from ..core.sparsify import apply_step, class_attention_scores, sparsify
from ..core.state import SparseTuningState
from .base import sparse_tuning_class


def projections(attn: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear]:
    """(query, key, value, output) linear layers of a transformers attention module."""
    if hasattr(attn, "q_proj"):  # 5.x ViT, DeiT, DINOv2; CLIP (out_proj)
        return attn.q_proj, attn.k_proj, attn.v_proj, getattr(attn, "o_proj", None) or attn.out_proj
    return attn.attention.query, attn.attention.key, attn.attention.value, attn.output.dense


def layer_parts(layer: nn.Module):
    """(norm before attention, attention, what follows attention before its residual, norm
    before the FFN, the FFN branch before its residual) of the layer families served."""
    same = lambda t: t
    if hasattr(layer, "layer_norm1"):  # CLIP
        return layer.layer_norm1, layer.self_attn, same, layer.layer_norm2, layer.mlp
    if hasattr(layer, "norm1"):  # DINOv2: layer scale and stochastic depth on both branches
        return (layer.norm1, layer.attention, lambda t: layer.drop_path(layer.layer_scale1(t)), layer.norm2,
                lambda t: layer.drop_path(layer.layer_scale2(layer.mlp(t))))
    if hasattr(layer, "mlp"):  # ViT, DeiT (5.x)
        return (layer.layernorm_before, layer.attention, layer.dropout, layer.layernorm_after,
                lambda t: layer.dropout(layer.mlp(t)))
    # ViT, DeiT (4.x): the residual is folded into output; its dense and dropout are the branch
    return (layer.layernorm_before, layer.attention, same, layer.layernorm_after,
            lambda t: layer.output.dropout(layer.output.dense(layer.intermediate(t))))


def attention_with_class_scores(layer: nn.Module, attn: nn.Module, x: torch.Tensor,
                                fused: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention output and the class token's head-averaged attention (B, N): fused SDPA
    plus the class row alone, or the explicit softmax."""
    B, N, C = x.shape
    q_lin, k_lin, v_lin, o_lin = projections(attn)
    H = layer.st_heads
    D = q_lin.out_features // H
    q, k, v = (lin(x).view(B, N, H, D).transpose(1, 2) for lin in (q_lin, k_lin, v_lin))
    scale = D ** -0.5
    p = next((v for v in (getattr(attn, "attention_dropout", None), getattr(attn, "dropout", None))
              if isinstance(v, float)), 0.0) if layer.training else 0.0
    if fused:
        scores = class_attention_scores(q, k, scale)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
    else:
        weights = ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        scores = weights[:, :, 0].mean(dim=1).float()
        out = F.dropout(weights, p, layer.training) @ v
    out = o_lin(out.transpose(1, 2).reshape(B, N, H * D))
    if not hasattr(attn, "q_proj"):  # 4.x: ViTSelfOutput's dropout
        out = attn.output.dropout(out)
    return out, scores


def _follow(a, step, num_prefix: int):
    if isinstance(a, FactoredOutput):
        return a._replace(coeffs=apply_step(a.coeffs, step, num_prefix))
    return apply_step(a, step, num_prefix)


def layer_forward(self, hidden_states: torch.Tensor, *args, **kwargs):
    """A transformers ViT layer with Sparse-Tuning: sparsify after attention (where asked), the
    FFN, and the Dense Adapter beside it; the adapter outputs travel on ``self.st``."""
    st: SparseTuningState = self.st
    if getattr(self, "gradient_checkpointing", False) and self.training:
        # Recomputing a layer would run the adapter hand-over twice.
        raise ValueError("gradient checkpointing is not supported on a transformers model with Sparse-Tuning")
    x = hidden_states
    B, N, C = x.shape
    if self.st_index == 0:
        st._history, st._steps, st._tokens = (), [], []
        st.last_num_patches, st.last_batch_size = N - st.num_prefix, B
    history = st._history
    norm1, attention, after_attention, norm2, ffn = layer_parts(self)
    h = norm1(x)
    step = None
    if self.st_sparsify:
        attn_out, scores = attention_with_class_scores(self, attention, h, self.fused_attn)
        x = x + after_attention(attn_out)
        x, step = sparsify(x, scores, st.config.keep_rate, st.num_prefix, st.config.merge)
        if step is not None:
            history = tuple(_follow(a, step, st.num_prefix) for a in history)
        st._steps.append(None if step is None else step.detached())
    else:
        attention_mask = args[0] if args else kwargs.pop("attention_mask", None)
        if attention_mask is not None and attention_mask.shape[-1] != N:
            # The model's mask is over the tokens before sparsification (all of them visible in a
            # ViT; tracing materialises it): past a sparsifying layer it no longer applies.
            attention_mask = None
        x = x + after_attention(attention(h, attention_mask=attention_mask, **kwargs)[0])
    out = x + ffn(norm2(x))
    if self.adapter is not None:
        inputs = [x] + [history[-d] for d in self.st_dense_inputs]
        if st.factored_history:
            a = self.adapter.forward_factored(inputs)
            out = a.add_to_(out, st.config.scale)
        else:
            a = self.adapter(inputs)
            out = torch.add(out, a, alpha=st.config.scale)
        keep = max(st.config.dense_inputs, default=0)
        history = (history + (a,))[-keep:] if keep else ()
    st._history = history
    st._tokens.append((N, out.shape[1]))
    if self.st_last:
        st.last_steps, st.last_tokens, st.last_steps_device = st._steps, st._tokens, out.device
        st._history = ()  # nothing held past the forward
    return out


_layer_classes: dict[type, type] = {}


def _layer_class(cls: type) -> type:
    if cls not in _layer_classes:
        _layer_classes[cls] = type(f"SparseTuning{cls.__name__}", (cls,), {"forward": layer_forward})
    return _layer_classes[cls]


def patch_layers(model: nn.Module, layers: nn.ModuleList, width: int, heads: int, num_prefix: int,
                 config: SparseTuningConfig) -> SparseTuningState:
    config = dataclasses.replace(config)
    sparsify_at = config.resolve_sparsify_at(len(layers))
    state = SparseTuningState(config, sparsify_at, num_prefix, layers, list(layers))
    ref = next(model.parameters())
    for i, layer in enumerate(layers):
        layer.__class__ = _layer_class(type(layer))
        layer.st, layer.st_index, layer.st_sparsify = state, i, i in sparsify_at
        layer.st_last, layer.st_heads = i == len(layers) - 1, heads
        layer.fused_attn = True
        layer.st_dense_inputs = tuple(d for d in config.dense_inputs if i >= d) if config.adapters else ()
        layer.adapter = DenseAdapter(width, config.bottleneck, 1 + len(layer.st_dense_inputs), config.fusion,
                                     device=ref.device, dtype=ref.dtype) if config.adapters else None
    model.__class__ = sparse_tuning_class(type(model))
    model.sparse_tuning = state
    return state
