"""The timm host: timm's VisionTransformer (ViT, DeiT, DINOv2, augreg, CLIP-style variants
built on timm's Block) and everything the package needs to know about it."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional

import timm
import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from ..core.config import SparseTuningConfig
from ..core.state import SparseTuningState
from . import timm_models  # noqa: F401  (registers the small ViTs with timm)
from ..errors import UserError
from .base import Host
from .timm_vit import check_supported, patch_vit


class TimmHost(Host):
    name = "timm"
    serves = ("a timm VisionTransformer (timm.models.vision_transformer.VisionTransformer or a subclass "
              "such as DeiT's), or its video wrapper")

    def owns(self, model: nn.Module) -> bool:
        from .timm_video import VideoViT

        return isinstance(model, (VisionTransformer, VideoViT))

    def image_model(self, model: nn.Module) -> nn.Module:
        from .timm_video import VideoViT

        return model.vit if isinstance(model, VideoViT) else model

    def knows(self, name: str) -> bool:
        return timm.is_model(name)

    def check_supported(self, model: nn.Module) -> None:
        check_supported(model)

    def check_name(self, name: str) -> None:
        if not timm.is_model(name):
            close = timm.list_models(f"*{name}*")[:5]
            hint = f"; similar: {', '.join(close)}" if close else "; `timm.list_models('vit_*')` lists them"
            raise UserError(f"unknown timm model {name!r}{hint}")

    def create(self, name: str, pretrained: bool = False, img_size: Optional[int] = None,
               num_classes: Optional[int] = None, device: str | torch.device = "cpu") -> nn.Module:
        self.check_name(name)
        kwargs: dict[str, Any] = {}
        if img_size:
            kwargs["img_size"] = img_size  # timm resamples the position embedding
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        try:
            with torch.device(device):
                return timm.create_model(name, pretrained=pretrained, **kwargs)
        except (OSError, RuntimeError) as e:
            if not pretrained:
                raise
            raise UserError(f"cannot load pre-trained weights for {name} ({e.__class__.__name__}: {e}); "
                            "offline, pass --weights FILE (a .safetensors/.pth/.bin/.npz checkpoint)") from None

    def load_weights(self, model: nn.Module, path: str | Path) -> None:
        """.npz (Google's ViT format) or a state dict (.safetensors, .pth, .bin), through timm's
        own loaders. The classifier is kept from the file only when its shape fits; any other
        missing or mismatched key is an error."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        if path.suffix == ".npz":
            try:
                model.load_pretrained(str(path))
            except Exception as e:  # a damaged archive or another model's arrays
                raise UserError(f"{path} is not a ViT .npz this model can read "
                                f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
            return
        from timm.models import load_state_dict
        from timm.models.vision_transformer import checkpoint_filter_fn

        try:
            with warnings.catch_warnings():  # torch's notes on a foreign file: the one-line error says it all
                warnings.simplefilter("ignore")
                state = checkpoint_filter_fn(load_state_dict(str(path)), model)
        except Exception as e:  # truncated, random or foreign bytes: safetensors, zip, pickle all differ
            # torch.load runs with weights_only: a file that would run code is refused, not executed.
            raise UserError(f"{path} is not a checkpoint this model can read "
                            f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
        own = model.state_dict()
        heads = {k for k in state if k.startswith(("head.", "head_dist.")) and k in own
                 and state[k].shape != own[k].shape}
        for k in heads:
            del state[k]
        wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state
                 if k in own and state[k].shape != own[k].shape]
        if wrong:
            raise UserError(f"{path} does not fit this model: {len(wrong)} weights of other shapes, e.g. {wrong[:3]}")
        result = model.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith(("head.", "head_dist.")) and ".adapter." not in k]
        if missing or result.unexpected_keys:
            raise UserError(f"{path} does not fit this model: missing {missing[:5]}, "
                            f"unexpected {result.unexpected_keys[:5]}")

    def blocks(self, model: nn.Module) -> nn.Sequential:
        model = self.image_model(model)
        return model.blocks

    def width(self, model: nn.Module) -> int:
        model = self.image_model(model)
        return int(model.embed_dim)

    def num_heads(self, model: nn.Module) -> int:
        model = self.image_model(model)
        return int(model.blocks[0].attn.num_heads)

    def num_prefix_tokens(self, model: nn.Module) -> int:
        model = self.image_model(model)
        return int(model.num_prefix_tokens)

    def patch_size(self, model: nn.Module) -> tuple[int, int]:
        model = self.image_model(model)
        return tuple(model.patch_embed.patch_size)

    def input_size(self, model: nn.Module) -> tuple[int, int, int]:
        model = self.image_model(model)
        return (model.patch_embed.proj.in_channels, *model.patch_embed.img_size)

    def check_input_size(self, model: nn.Module, input_size: tuple[int, int, int]) -> None:
        model = self.image_model(model)
        if len(input_size) != 3:
            raise UserError(f"input_size={input_size!r}: expected (channels, height, width)")
        embed = model.patch_embed
        C, H, W = input_size
        ph, pw = embed.patch_size
        if H % ph or W % pw:
            raise UserError(f"image size {H}x{W} is not divisible by the patch size {ph}x{pw}")
        in_chans = embed.proj.in_channels
        if C != in_chans:
            raise UserError(f"input has {C} channels; the model takes {in_chans}")
        dynamic = getattr(embed, "dynamic_img_size", False) or not getattr(embed, "strict_img_size", True)
        if not dynamic and (H, W) != tuple(embed.img_size):
            raise UserError(
                f"image size {H}x{W} differs from the model's {embed.img_size[0]}x{embed.img_size[1]}; "
                "create the model with img_size=... (timm resamples the position embedding) "
                "or dynamic_img_size=True")

    def attention_modules(self, model: nn.Module) -> list[nn.Module]:
        model = self.image_model(model)
        return [m for m in model.modules() if hasattr(m, "fused_attn")]

    def classifier(self, model: nn.Module) -> list[nn.Module]:
        model = self.image_model(model)
        heads = model.get_classifier()  # DeiT's distilled models have two
        return list(heads) if isinstance(heads, (tuple, list)) else [heads]

    def classifier_classes(self, model: nn.Module) -> int:
        model = self.image_model(model)
        return int(model.num_classes)

    def data_config(self, model: nn.Module) -> dict[str, Any]:
        model = self.image_model(model)
        from timm.data import resolve_data_config

        cfg = resolve_data_config({}, model=model)
        # The pretrained config names the size the weights were trained at (518 for DINOv2); the
        # model may have been built for another (--img-size): its patch embedding knows which.
        cfg["input_size"] = self.input_size(model)
        cfg.setdefault("crop_mode", "center")
        return cfg

    def features(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model.forward_features(x)

    def head(self, model: nn.Module, features: torch.Tensor) -> torch.Tensor:
        return model.forward_head(features)

    def patch(self, model: nn.Module, config: SparseTuningConfig) -> SparseTuningState:
        return patch_vit(model, config)

    def add_ffn_adapters(self, model: nn.Module, bottleneck: int) -> list[nn.Module]:
        from .timm_baselines import add_sequential_adapters

        return add_sequential_adapters(model, bottleneck)

    def add_deep_prompts(self, model: nn.Module, num_prompts: int) -> nn.Parameter:
        from .timm_baselines import add_deep_prompts

        return add_deep_prompts(model, num_prompts)

    def block_maps(self, model: nn.Module, x: torch.Tensor, blocks: tuple[int, ...]) -> list[torch.Tensor]:
        # timm's feature API; on a patched model, ours (hosts/timm_features.py), restored
        return self.image_model(model).forward_intermediates(x, indices=list(blocks), norm=True, output_fmt="NCHW",
                                                             intermediates_only=True)

    def lora_targets(self, model: nn.Module) -> list[str]:
        if not hasattr(model, "sparse_tuning"):  # a reduction patched in first keeps timm's qkv
            check_supported(model)
        return ["qkv"]

    def set_grad_checkpointing(self, model: nn.Module, enable: bool = True) -> None:
        self.image_model(model).set_grad_checkpointing(enable)  # timm's; ours once Sparse-Tuning patched the model

    def video_model(self, model: nn.Module, frames: int, layout: str, tubelet: int) -> nn.Module:
        from .timm_video import VideoViT

        return VideoViT(model, frames, layout, tubelet)
