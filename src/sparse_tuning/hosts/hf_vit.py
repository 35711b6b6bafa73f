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
import inspect
from typing import Optional

import torch
import torch.utils.checkpoint
import torch.nn as nn
import torch.nn.functional as F

from ..core.adapter import DenseAdapter, follow
from ..core.config import SparseTuningConfig
from ..core.reduction import BlockTokens, compose_sources, restore
from ..core.sparsify import class_attention_scores
from ..core.state import SparseTuningState
from ..errors import UserError
from .base import _SparseTuningModel, sparse_tuning_class


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


def _attention_dropout(attn: nn.Module) -> float:
    """The attention-probability dropout: a float on 5.x and CLIP (``attention_dropout`` or
    ``dropout``), the inner self-attention's nn.Dropout on 4.x ViT, DeiT and DINOv2."""
    for value in (getattr(attn, "attention_dropout", None), getattr(attn, "dropout", None)):
        if isinstance(value, float):
            return value
    inner = getattr(getattr(attn, "attention", None), "dropout", None)
    return float(inner.p) if isinstance(inner, nn.Dropout) else 0.0


def attention(layer: nn.Module, attn: nn.Module, x: torch.Tensor, fused: bool, class_scores: bool,
              size: Optional[torch.Tensor] = None,
              keys: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """The layer's self-attention from its own q/k/v/o weights; if asked, the class token's
    head-averaged attention (B, N) and ToMe's metric, the keys averaged over heads (B, N, D);
    ``size`` (B, N, 1): proportional attention, log(size) added to the logits. Fused SDPA (the
    bias as its float mask, the class row alone for the scores) or the explicit softmax.
    Computed here for every layer rather than through transformers' attention module, whose
    signature changes between versions (head_mask in 4.x, attention_mask in 5.x); a vision
    ViT's layers attend to every token, so no mask applies."""
    B, N, C = x.shape
    q_lin, k_lin, v_lin, o_lin = projections(attn)
    H = layer.st_heads
    D = q_lin.out_features // H
    q, k, v = (lin(x).view(B, N, H, D).transpose(1, 2) for lin in (q_lin, k_lin, v_lin))
    scale = D ** -0.5
    p = _attention_dropout(attn) if layer.training else 0.0
    bias = None if size is None else size.log().to(q.dtype).view(B, 1, 1, N)
    scores = None
    if fused:
        if class_scores:
            scores = class_attention_scores(q, k, scale)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
    else:
        logits = (q * scale) @ k.transpose(-2, -1)
        weights = (logits if bias is None else logits + bias).softmax(dim=-1)
        if class_scores:
            scores = weights[:, :, 0].mean(dim=1).float()
        out = F.dropout(weights, p, layer.training) @ v
    out = o_lin(out.transpose(1, 2).reshape(B, N, H * D))
    if not hasattr(attn, "q_proj"):  # 4.x: ViTSelfOutput's dropout
        out = attn.output.dropout(out)
    return out, scores, k.mean(dim=1) if keys else None


def _check_arguments(layer: nn.Module, args: tuple, kwargs: dict) -> None:
    # 4.x passes head_mask (ViT, DeiT, DINOv2) or the two attention masks (CLIP) positionally,
    # None from a vision model's own forward; 5.x passes attention_mask, None or all-visible.
    # Masks are not read: a vision ViT's layers attend to every token.
    given = dict(zip(layer.st_arguments, args), **kwargs)
    if given.get("head_mask") is not None:
        raise UserError("head_mask is not supported on a transformers model with Sparse-Tuning")
    if given.get("output_attentions"):
        raise UserError("a transformers model with Sparse-Tuning returns no attention maps (output_attentions); "
                        "st.kept_tokens(model) says which tokens each sparsification kept")


def layer_compute(layer: nn.Module, x: torch.Tensor, history: tuple, size: Optional[torch.Tensor]):
    """One layer with Sparse-Tuning, as a pure function of its inputs (a checkpointed layer runs
    it again in the backward pass): attention, the token reduction where asked (earlier adapter
    outputs follow the same plan), the FFN, and the Dense Adapter beside it. size: ToMe's token
    sizes once it has merged. Returns (out, history, plan, size)."""
    st: SparseTuningState = layer.st
    cfg = st.config
    rule = cfg.rule
    norm1, attention_module, after_attention, norm2, ffn = layer_parts(layer)
    needs = rule.needs(cfg, layer.st_index, st.depth)
    attn_out, scores, keys = attention(layer, attention_module, norm1(x), layer.fused_attn, needs.class_scores,
                                       size=size if needs.sizes else None, keys=needs.keys)
    x = x + after_attention(attn_out)
    plan = rule.plan(cfg, layer.st_index, st.depth, BlockTokens(x, st.num_prefix, scores, keys, size))
    if plan is not None:
        x, size = plan.apply(x), plan.sizes_after(size)
        history = tuple(follow(a, plan) for a in history)
    out = x + ffn(norm2(x))
    if layer.adapter is not None:
        inputs = [x] + [history[-d] for d in layer.st_dense_inputs]
        if st.factored_history:
            a = layer.adapter.forward_factored(inputs)
            out = a.add_to_(out, st.config.scale)
        else:
            a = layer.adapter(inputs)
            out = torch.add(out, a, alpha=st.config.scale)
        keep = max(st.config.dense_inputs, default=0)
        history = (history + (a,))[-keep:] if keep else ()
    return out, history, plan, size


def layer_forward(self, hidden_states: torch.Tensor, *args, **kwargs):
    """A transformers layer's forward with Sparse-Tuning. The adapter outputs travel from layer
    to layer on ``self.st``; with gradient checkpointing (transformers' switch, or the model's
    set_grad_checkpointing) the layer checkpoints itself, passing them as inputs."""
    _check_arguments(self, args, kwargs)
    st: SparseTuningState = self.st
    x = hidden_states
    B, N, C = x.shape
    if self.st_index == 0:
        st._history, st._size, st._plans, st._tokens, st._input = (), None, [], [], (N, B)
    if (self.gradient_checkpointing or st.grad_checkpointing) and self.training and torch.is_grad_enabled():
        # Non-reentrant always: reentrant checkpointing differentiates only through tensor
        # arguments, and the adapter outputs arrive in a tuple (factored) from earlier layers.
        # transformers' function is used when set (it may offload to the CPU); the keyword wins.
        checkpoint = getattr(self, "_gradient_checkpointing_func", None) or torch.utils.checkpoint.checkpoint
        out, history, plan, size = checkpoint(layer_compute, self, x, st._history, st._size, use_reentrant=False)
    else:
        out, history, plan, size = layer_compute(self, x, st._history, st._size)
    st._plans.append(None if plan is None else plan.detached())
    st._history, st._size = history, size
    st._tokens.append((N, out.shape[1]))
    if self.st_last:
        st.record(st._plans, st._tokens, *st._input, out.device)
        st._history, st._size = (), None  # nothing held past the forward
    return (out,) if self.st_returns_tuple else out


_layer_classes: dict[type, type] = {}


class _SparseTuningLayer:
    """Mixed into a layer's class. transformers' own checkpointing of a layer is bypassed (the
    layer checkpoints itself, see layer_forward): 4.x wraps ``__call__``, 5.x wraps ``forward``
    when a subclass is made, so forward is set after the class exists (``_layer_class``)."""

    __call__ = nn.Module.__call__

    def __reduce_ex__(self, protocol):
        # a runtime class, like the model's (base._SparseTuningModel): pickled by its original
        return _new_layer, (type(self).__mro__[2],), self.__getstate__()


def _new_layer(original: type) -> nn.Module:
    cls = _layer_class(original)
    return cls.__new__(cls)


def _layer_class(cls: type) -> type:
    if cls not in _layer_classes:
        new = type(f"SparseTuning{cls.__name__}", (_SparseTuningLayer, cls), {})
        new.forward = layer_forward
        _layer_classes[cls] = new
    return _layer_classes[cls]


def _layer_signature(cls: type) -> tuple[tuple[str, ...], bool]:
    """The names of the layer's positional arguments after hidden_states, and whether it
    returns a tuple (4.x CLIP, older 4.x ViT) rather than a tensor: read from the installed
    version's forward."""
    signature = inspect.signature(cls.forward)
    names = tuple(list(signature.parameters)[2:])
    return names, "tuple" in str(signature.return_annotation).lower()


class _TransformersModel(_SparseTuningModel):
    """A patched transformers model: transformers' checkpointing switch reaches the layers, and
    ``output_hidden_states`` come back restored to the full sequence (the plain model's shapes,
    what dense heads read): each token of the embeddings holds the token it went to."""

    def _set_gradient_checkpointing(self, *args, **kwargs):
        super()._set_gradient_checkpointing(*args, **kwargs)
        _claim_checkpointing(self, self.sparse_tuning._blocks)



def restore_hidden_states(model: nn.Module, args, output):
    """The model's forward hook (a hook, not a forward override: transformers' Trainer reads the
    forward's signature): ``hidden_states`` restored (``restored_hidden_states``)."""
    hidden = getattr(output, "hidden_states", None)
    if hidden is not None:
        output["hidden_states"] = restored_hidden_states(model.sparse_tuning, hidden)
    return output


def restored_hidden_states(st: SparseTuningState, hidden: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """(embeddings, the output of each layer) with every layer's output restored to the embeddings'
    sequence (core/reduction.py's ``restore``)."""
    B, N, _ = hidden[0].shape
    where = compose_sources(st.last_plans, N, B, device=hidden[0].device)
    return (hidden[0],) + tuple(restore(h, w) for h, w in zip(hidden[1:], where))


def _claim_checkpointing(model: nn.Module, layers: nn.ModuleList) -> None:
    """Older 4.x checkpoints in the encoder's loop, which would rerun a layer's hand-over of the
    adapter outputs in the backward pass: the flag is taken off every other module (4.5x and 5.x
    encoders keep one they no longer read) and the layers, which checkpoint themselves, hold it.
    Flags transformers set on the layers themselves stay (5.x every_n_layers)."""
    ours = {id(layer) for layer in layers}
    others = [m for m in model.modules() if id(m) not in ours and getattr(m, "gradient_checkpointing", False) is True]
    for module in others:
        module.gradient_checkpointing = False
    if others and not any(layer.gradient_checkpointing for layer in layers):
        for layer in layers:
            layer.gradient_checkpointing = True
            layer._gradient_checkpointing_func = getattr(others[0], "_gradient_checkpointing_func", None)


def patch_layers(model: nn.Module, layers: nn.ModuleList, width: int, heads: int, num_prefix: int,
                 config: SparseTuningConfig) -> SparseTuningState:
    config = dataclasses.replace(config)
    sparsify_at = config.reduces_at(len(layers))  # the rule's blocks, checked against the depth now
    state = SparseTuningState(config, sparsify_at, num_prefix, layers, list(layers))
    ref = next(model.parameters())
    for i, layer in enumerate(layers):
        layer.st_arguments, layer.st_returns_tuple = _layer_signature(type(layer))
        layer.__class__ = _layer_class(type(layer))
        layer.gradient_checkpointing = getattr(layer, "gradient_checkpointing", False)
        layer.st, layer.st_index = state, i
        layer.st_last, layer.st_heads = i == len(layers) - 1, heads
        layer.fused_attn = True
        layer.st_dense_inputs = tuple(d for d in config.dense_inputs if i >= d) if config.adapters else ()
        layer.adapter = DenseAdapter(width, config.bottleneck, 1 + len(layer.st_dense_inputs), config.fusion,
                                     device=ref.device, dtype=ref.dtype) if config.adapters else None
    model.__class__ = sparse_tuning_class(type(model), _TransformersModel)
    model.sparse_tuning = state
    model.register_forward_hook(restore_hidden_states)
    _claim_checkpointing(model, layers)
    return state
