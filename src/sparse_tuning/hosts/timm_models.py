"""Small ViTs registered with timm, for CPU demos and smoke runs: the paper's 12-block layout
(so sparsification at blocks 3, 6, 9 applies) at widths and image sizes a laptop trains fast."""
from __future__ import annotations

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

# timm reads a module's `default_cfgs` when its models are registered.
default_cfgs = generate_default_cfgs({
    "st_vit_micro_patch4_32": {
        "input_size": (3, 32, 32), "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "interpolation": "bicubic", "crop_pct": 1.0, "num_classes": 10,
        "first_conv": "patch_embed.proj", "classifier": "head",
    },
})


@register_model
def st_vit_micro_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT, 12 blocks, width 64, 4 heads, 32x32 images in 4x4 patches (64 patch tokens); 0.6M
    parameters. No published weights: train it, or load a file with --weights."""
    args = dict(img_size=32, patch_size=4, embed_dim=64, depth=12, num_heads=4)
    return build_model_with_cfg(VisionTransformer, "st_vit_micro_patch4_32", pretrained,
                                pretrained_filter_fn=checkpoint_filter_fn, **dict(args, **kwargs))
