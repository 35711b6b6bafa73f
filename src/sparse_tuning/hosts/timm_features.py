"""timm's feature API on a token-reduced ViT: ``forward_intermediates`` returns every asked-for
block's output restored to the full patch grid (each patch holds the token it went to: itself
where kept, the fused or merged token where not), with the adapters' outputs in it, in the shapes
and formats of the plain model's. What dense heads (timm's ``features_only`` wrappers,
segmentation and detection necks) read works unchanged; at keep rate 1 it equals timm's own.

The blocks run through the Sparse-Tuning container (hosts/timm_vit.py), which passes the adapter
outputs between them; timm's loop calls the blocks one by one, so the method is ours, with timm's
arguments and its post-processing (prefix tokens apart, NCHW or NLC, the final norm).
"""
from __future__ import annotations

from typing import Any, Optional, Union

import torch

from ..errors import UserError
from .base import _SparseTuningModel


class TimmModel(_SparseTuningModel):
    """Mixed into a patched timm ViT's class."""

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, list[int]]] = None,
                              return_prefix_tokens: bool = False, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False, output_dict: bool = False,
                              attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False) -> Any:
        """timm's ``VisionTransformer.forward_intermediates``, each intermediate restored to the full
        grid; the final features (``intermediates_only=False``) are the last block's, restored too."""
        from timm.models._features import feature_take_indices

        if output_fmt not in ("NCHW", "NLC"):
            raise UserError(f"output_fmt={output_fmt!r}: expected NCHW or NLC")
        if attn_mask is not None or is_causal:
            raise UserError("attention masks are not supported on a model with Sparse-Tuning: every token "
                            "attends to every token, and the reduction rules choose among them")
        take, max_index = feature_take_indices(len(self.blocks), indices)
        last = max_index if stop_early else len(self.blocks) - 1  # the final features: the last block run
        B, _, height, width = x.shape
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        want = tuple(take) + (() if intermediates_only else (last,))
        _, outputs = self.blocks.run(x, take=want, stop_after=max_index if stop_early else None)
        intermediates = [self.norm(outputs[i]) if norm else outputs[i] for i in sorted(take)]  # block order, as timm
        P = self.num_prefix_tokens
        prefix = [y[:, :P] for y in intermediates] if P else None
        intermediates = [y[:, P:] for y in intermediates]
        if output_fmt == "NCHW":
            H, W = self.patch_embed.dynamic_feat_size((height, width))
            intermediates = [y.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous() for y in intermediates]
        final = None if intermediates_only else self.norm(outputs[last])
        if output_dict:
            out: dict[str, Any] = {"image_intermediates": intermediates}
            if prefix is not None and return_prefix_tokens:
                out["image_intermediates_prefix"] = prefix
            if final is not None:
                out["image_features"] = final
            return out
        if prefix is not None and return_prefix_tokens:
            intermediates = list(zip(intermediates, prefix))
        return intermediates if intermediates_only else (final, intermediates)
