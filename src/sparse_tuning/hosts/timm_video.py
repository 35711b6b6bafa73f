"""Video through an image-pre-trained timm ViT, in two token layouts.

joint  (default): spatio-temporal tokens. The 2-D patch embedding is inflated to a tubelet
       embedding of `tubelet` frames (its kernel spread evenly over time, so a static video
       embeds exactly like its image); spatial position embeddings come from the image model and
       a learned temporal one (zero at the start) is added; one class token. Token
       sparsification then ranks and merges tokens across space and time.
frames: every frame through the image model on its own; the class-token features are averaged
       over time before the head (the cheap baseline layout).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from ..errors import UserError
from .timm_vit import check_supported

LAYOUTS = ("joint", "frames")


class VideoViT(nn.Module):
    """Wraps an image ViT (``self.vit``, Sparse-Tuning applied or not) for (B, C, T, H, W) input."""

    def __init__(self, vit: VisionTransformer, frames: int, layout: str = "joint", tubelet: int = 2) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise UserError(f"video layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
        if layout == "joint" and (tubelet < 1 or frames % tubelet):
            raise UserError(f"frames={frames} must be a multiple of tubelet={tubelet}")
        check_video_backbone(vit)
        self.vit, self.frames, self.layout, self.tubelet = vit, frames, layout, tubelet
        if layout == "joint":
            self.time_steps = frames // tubelet
            proj = vit.patch_embed.proj
            # Frozen like the backbone it comes from: inflated, not learned.
            w = proj.weight.detach().unsqueeze(2).repeat(1, 1, tubelet, 1, 1) / tubelet
            self.register_buffer("tubelet_weight", w, persistent=False)
            self.temporal_pos = nn.Parameter(torch.zeros(1, self.time_steps, 1, vit.embed_dim,
                                                         device=w.device, dtype=w.dtype))

    @property
    def num_classes(self) -> int:
        return self.vit.num_classes

    @property
    def sparse_tuning(self):
        """The image model's Sparse-Tuning state (keep rate, kept tokens), or None."""
        return getattr(self.vit, "sparse_tuning", None)

    @property
    def patch_embed(self):
        return self.vit.patch_embed

    def tokens_per_frame(self) -> int:
        return self.vit.patch_embed.num_patches

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, prefix + T' * N, D) with position embeddings."""
        B, C, T, H, W = x.shape
        vit = self.vit
        proj = vit.patch_embed.proj
        p = proj.stride
        tokens = F.conv3d(x, self.tubelet_weight.to(x.dtype), proj.bias, stride=(self.tubelet, *p))  # (B, D, T', H', W')
        tokens = vit.patch_embed.norm(tokens.flatten(3).permute(0, 2, 3, 1))  # (B, T', N, D)
        P = vit.num_prefix_tokens
        spatial = vit.pos_embed[:, P:] if not vit.no_embed_class else vit.pos_embed
        tokens = tokens + spatial.unsqueeze(1) + self.temporal_pos  # (B, T', N, D)
        tokens = tokens.flatten(1, 2)
        prefix = [vit.cls_token.expand(B, -1, -1)]
        if getattr(vit, "reg_token", None) is not None:
            prefix.append(vit.reg_token.expand(B, -1, -1))
        prefix = torch.cat(prefix, dim=1)
        if not vit.no_embed_class:
            prefix = prefix + vit.pos_embed[:, :P]
        return torch.cat([prefix, tokens], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 6:  # (B, V, C, T, H, W): several test views per video, logits averaged
            B, V = x.shape[:2]
            return self(x.flatten(0, 1)).view(B, V, -1).mean(dim=1)
        B, C, T, H, W = x.shape
        if T != self.frames:
            raise UserError(f"the model takes {self.frames} frames, got {T}")
        vit = self.vit
        if self.layout == "frames":
            feats = vit.forward_head(vit.forward_features(x.transpose(1, 2).flatten(0, 1)), pre_logits=True)
            return vit.head(feats.view(B, T, -1).mean(dim=1))
        h = vit.norm_pre(self.embed(x))
        h = vit.norm(vit.blocks(h))
        return vit.forward_head(h)


def check_video_backbone(vit: nn.Module) -> None:
    """A ViT the image path supports (checked before a method is applied), not distilled."""
    if getattr(vit, "sparse_tuning", None) is None:
        check_supported(vit, plain_blocks=False)  # adapter and vpt bring their own blocks
    if getattr(vit, "dist_token", None) is not None:
        raise UserError("distilled DeiT models are not supported for video (two heads, two prefix tokens)")


def kept_positions(model: VideoViT) -> list[torch.Tensor]:
    """After a forward of the joint layout: per step, (B, k, 2) LongTensors of (time step, patch)
    of the kept tokens; a kept fused token is (-1, -1). Time steps count tubelets."""
    if model.layout != "joint":
        raise UserError("kept positions are defined for the joint layout (frames: use kept_tokens per frame)")
    N = model.tokens_per_frame()
    out = []
    for k in model.vit.sparse_tuning.kept_tokens():
        t, p = torch.div(k, N, rounding_mode="floor"), k % N
        fused = k < 0
        out.append(torch.stack([t.masked_fill(fused, -1), p.masked_fill(fused, -1)], dim=-1))
    return out
