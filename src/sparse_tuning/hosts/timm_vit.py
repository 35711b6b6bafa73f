"""Sparse-Tuning inside timm's VisionTransformer: the blocks and the patch, in place.

As ToMe does, blocks change class (``Block`` -> ``SparseTuningBlock``) and keep every timm
submodule and state-dict key; each block gains one new submodule, ``adapter``. The
``model.blocks`` container changes class too, so one forward call owns the per-forward state
(earlier adapter outputs, the sparsification steps taken) instead of hiding it in the modules.

Two comparison methods run inside these blocks, with or without a token reduction
(timm_baselines.py): the sequential adapter as ``ffn_adapter`` on each FFN's output, and
VPT-deep's prompts as ``model.blocks.prompts``, protected prefix tokens that no rule removes.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import Attention
from timm.models.vision_transformer import Block, VisionTransformer

from ..core.adapter import AdapterInput, DenseAdapter, follow
from ..core.config import SparseTuningConfig
from ..core.reduction import BlockTokens, Plan, compose_sources, restore
from ..core.sparsify import class_attention_scores
from ..core.state import SparseTuningState
from ..errors import UserError
from .base import sparse_tuning_class
from .timm_features import TimmModel


def attention(attn: Attention, x: torch.Tensor, class_scores: bool = False, size: Optional[torch.Tensor] = None,
              keys: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """timm ``Attention.forward``, and what token reduction reads from it: the class token's
    head-averaged attention (B, N) if ``class_scores``; ToMe's metric, the keys averaged over
    heads (B, N, D), if ``keys``. ``size`` (B, N, 1): proportional attention, log(size) added to
    every query's logits over the keys.

    Fused path: scaled_dot_product_attention (the bias as its float mask) and the class row
    alone for the scores. Eager path: timm's explicit softmax, whose class row is the scores.
    """
    B, N, C = x.shape
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    bias = None if size is None else size.log().to(q.dtype).view(B, 1, 1, N)
    scores = None
    if attn.fused_attn:
        if class_scores:
            scores = class_attention_scores(q, k, attn.scale)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                             dropout_p=attn.attn_drop.p if attn.training else 0.0)
    else:
        logits = (q * attn.scale) @ k.transpose(-2, -1)
        weights = (logits if bias is None else logits + bias).softmax(dim=-1)
        if class_scores:
            scores = weights[:, :, 0].mean(dim=1).float()
        out = attn.attn_drop(weights) @ v
    out = attn.norm(out.transpose(1, 2).reshape(B, N, attn.num_heads * attn.head_dim))
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out)), scores, k.mean(dim=1) if keys else None


class SparseTuningBlock(Block):
    """A timm Block whose reduction rule may reduce the tokens after its attention (core/reduction.py),
    with a Dense Adapter beside its FFN."""

    st_index: int
    st_dense_inputs: tuple[int, ...]   # the distances d (n >= d) whose adapters feed this one
    st: SparseTuningState
    adapter: Optional[DenseAdapter]
    ffn_adapter: Optional[nn.Module]   # --method adapter: on the FFN's output

    def forward(self, x: torch.Tensor, history: Optional[tuple[AdapterInput, ...]] = None,
                size: Optional[torch.Tensor] = None, **kwargs):
        """x (B, N, C); history: the outputs of the latest earlier adapters, oldest first
        (factored when ``st.factored_history``); size (B, N, 1): the original patches each token
        holds once ToMe has merged (None before).

        Returns (x, history, plan, size) for the next block (plan: the reduction's, or None).
        """
        if history is None or kwargs:
            raise RuntimeError(
                "Sparse-Tuning blocks run only through model.blocks (a model forward, or the model's "
                "forward_intermediates), which passes the adapter outputs between them; attention "
                "masks are not supported")
        st = self.st
        cfg = st.config
        rule = cfg.rule
        h = self.norm1(x)
        needs = rule.needs(cfg, self.st_index, st.depth)
        if needs.attention:  # what the rule reads, from inside the attention
            attn_out, scores, keys = attention(self.attn, h, class_scores=needs.class_scores,
                                               size=size if needs.sizes else None, keys=needs.keys)
        else:
            attn_out, scores, keys = self.attn(h), None, None
        x = x + self.drop_path1(self.ls1(attn_out))
        plan = rule.plan(cfg, self.st_index, st.depth, BlockTokens(x, st.num_prefix, scores, keys, size))
        if plan is not None:
            x, size = plan.apply(x), plan.sizes_after(size)
            # Earlier adapter outputs follow the tokens: the same plan (kept indices and merge weights).
            history = tuple(follow(a, plan) for a in history)
        ffn = self.ls2(self.mlp(self.norm2(x)))
        # Houlsby's place: inside the residual branch, after the FFN (getattr: blocks pickled before it existed)
        if getattr(self, "ffn_adapter", None) is not None:
            ffn = ffn + self.ffn_adapter(ffn)
        out = x + self.drop_path2(ffn)
        if self.adapter is not None:
            inputs = [x] + [history[-d] for d in self.st_dense_inputs]
            if st.factored_history:
                a = self.adapter.forward_factored(inputs)
                out = a.add_to_(out, st.config.scale)  # out is the fresh sum above
            else:
                a = self.adapter(inputs)
                out = torch.add(out, a, alpha=st.config.scale)  # one pass, no scaled temporary
            # Keep only the outputs a later adapter will read (the latest max(dense_inputs)).
            keep = max(st.config.dense_inputs, default=0)
            history = (history + (a,))[-keep:] if keep else ()
        return out, history, plan, size


def place_prompts(x: torch.Tensor, prompts: torch.Tensor, num_prefix: int, replace: bool) -> torch.Tensor:
    """VPT-deep: the prompts (n, C) right after the prefix tokens of x (B, N, C), inserted, or
    replacing the n tokens there (the previous block's prompt outputs)."""
    B, N, C = x.shape
    n = prompts.shape[0]
    return torch.cat([x[:, :num_prefix], prompts.expand(B, -1, -1), x[:, num_prefix + (n if replace else 0):]], dim=1)


class SparseTuningBlocks(nn.Sequential):
    """``model.blocks``: runs the blocks in order, passing adapter outputs from block to block.
    With VPT's ``prompts`` (depth, n, C), each block's own prompts sit after the model's prefix
    tokens, counted in ``st.num_prefix`` so that no reduction removes or merges them; they are
    taken out after the last block, so pooling and head see the usual sequence."""

    st: SparseTuningState
    prompts: Optional[nn.Parameter]    # (depth, n, C): --method vpt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)[0]

    def __getitem__(self, idx):
        """A slice (timm's prune_intermediate_layers keeps blocks[:k + 1]) runs as these blocks do:
        the same state (the reduction schedule of the whole model) and the same prompts."""
        out = super().__getitem__(idx)
        if isinstance(idx, slice):
            out.st, out.prompts = self.st, getattr(self, "prompts", None)
        return out

    def run(self, x: torch.Tensor, take: tuple[int, ...] = (), stop_after: Optional[int] = None
            ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """The blocks on x (B, N, C): the last output (the reduced sequence, prompts taken out) and
        the outputs of the blocks in ``take`` restored to the full input sequence (B, N, C): each
        token of the input holds the token it went to (core/reduction.py's ``restore``; a dropped
        one is zeros). ``stop_after``: the last block to run."""
        st = self.st
        prompts = getattr(self, "prompts", None)  # getattr: containers pickled before it existed
        n = 0 if prompts is None else prompts.shape[1]
        P = st.num_prefix - n  # the model's own prefix tokens (st.num_prompts == n)
        if prompts is not None:
            x = place_prompts(x, prompts[0], P, replace=False)
        B, N, C = x.shape
        history: tuple[AdapterInput, ...] = ()
        size: Optional[torch.Tensor] = None
        plans: list[Optional[Plan]] = []
        tokens: list[tuple[int, int]] = []
        taken: dict[int, torch.Tensor] = {}
        for i, blk in enumerate(self):
            if i and prompts is not None:
                x = place_prompts(x, prompts[i], P, replace=True)
            n_in = x.shape[1]
            if st.grad_checkpointing and torch.is_grad_enabled():
                x, history, plan, size = torch.utils.checkpoint.checkpoint(blk, x, history, size, use_reentrant=False)
            else:
                x, history, plan, size = blk(x, history, size)
            tokens.append((n_in, x.shape[1]))
            plans.append(None if plan is None else plan.detached())  # indices only, no autograd graph held
            if i in take:
                taken[i] = x
            if i == stop_after:
                break
        st.record(plans, tokens, N, B, x.device)
        if taken:
            where = compose_sources(plans, N, B, device=x.device)
            taken = {i: restore(out, where[i]) for i, out in taken.items()}
        without_prompts = lambda t: t if prompts is None else torch.cat([t[:, :P], t[:, P + n:]], dim=1)
        return without_prompts(x), {i: without_prompts(t) for i, t in taken.items()}


def check_supported(model: nn.Module, plain_blocks: bool = True) -> None:
    """Raise ValueError naming why a model cannot take Sparse-Tuning. plain_blocks=False: the
    blocks may be a comparison method's (the video wrapper only calls them in order)."""
    if isinstance(getattr(model, "sparse_tuning", None), SparseTuningState):
        if model.blocks.prompts is not None or any(blk.ffn_adapter is not None for blk in model.blocks):
            raise UserError("this model already has a method's adapters or prompts (--method adapter or vpt); "
                            "apply one method, to a fresh model")
        raise UserError("Sparse-Tuning is already applied to this model; apply it once, to a fresh model")
    if not isinstance(model, VisionTransformer):
        raise UserError(
            f"{type(model).__name__} is not a timm VisionTransformer; Sparse-Tuning needs a plain ViT "
            "(timm.models.vision_transformer.VisionTransformer or a subclass such as DeiT's)")
    if getattr(model, "cls_token", None) is None:
        raise UserError("this ViT has no class token; token sparsification ranks tokens by the "
                        "class token's attention, so a class token is required")
    if getattr(model, "attn_pool", None) is not None:
        raise UserError("this ViT pools with an attention-pool head (global_pool='map'); Sparse-Tuning "
                        "needs the class-token head ('token') or average pooling")
    if not isinstance(model.patch_drop, nn.Identity):
        raise UserError("patch dropout (patch_drop_rate > 0) is not supported with token sparsification")
    if not plain_blocks:
        return
    if type(model.blocks) is not nn.Sequential:
        raise UserError(f"model.blocks is {type(model.blocks).__name__} (another method's change); apply "
                        "Sparse-Tuning to a plain ViT, or give that method a --reduction")
    for i, blk in enumerate(model.blocks):
        if type(blk) is not Block or type(blk.attn) is not Attention:
            raise UserError(
                f"block {i} is {type(blk).__name__} with {type(getattr(blk, 'attn', None)).__name__}; "
                "Sparse-Tuning supports timm's pre-norm Block with its standard Attention")


def patch_vit(model: VisionTransformer, config: SparseTuningConfig) -> SparseTuningState:
    """Patch ``model`` in place and return its state object; the model must be supported."""
    check_supported(model)
    config = dataclasses.replace(config)  # the model's own copy: its keep rate changes alone
    depth = len(model.blocks)
    sparsify_at = config.reduces_at(depth)  # the rule's blocks, checked against the depth now
    state = SparseTuningState(config, sparsify_at, model.num_prefix_tokens, model.blocks,
                              [blk.attn for blk in model.blocks])
    ref = next(model.parameters())
    for i, blk in enumerate(model.blocks):
        blk.__class__ = SparseTuningBlock
        blk.st = state
        blk.st_index = i
        blk.st_dense_inputs = tuple(d for d in config.dense_inputs if i >= d) if config.adapters else ()
        blk.adapter = DenseAdapter(
            model.embed_dim, config.bottleneck, 1 + len(blk.st_dense_inputs), config.fusion,
            device=ref.device, dtype=ref.dtype) if config.adapters else None
        blk.ffn_adapter = None
    model.blocks.__class__ = SparseTuningBlocks
    model.blocks.st = state
    model.blocks.prompts = None
    if model.grad_checkpointing:
        state.grad_checkpointing, model.grad_checkpointing = True, False
    model.__class__ = sparse_tuning_class(type(model), TimmModel)
    model.sparse_tuning = state
    return state
