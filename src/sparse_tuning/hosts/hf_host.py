"""The Hugging Face transformers host: ViT, DeiT (also with a distillation token), DINOv2
(also with registers) and CLIP vision models, whose layers hold a class token first.

Model names are ``hf:ID_OR_DIR`` (``from_pretrained``; a local folder works offline)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from ..core.config import SparseTuningConfig
from ..core.state import SparseTuningState
from ..errors import UserError
from .base import Host

PREFIX = "hf:"


def _backbone(model: nn.Module) -> nn.Module:
    """The base model inside a task model (``model.vit``, ``model.deit``, ``model.dinov2``,
    ``model.vision_model``), or the model itself."""
    for name in ("vit", "deit", "dinov2", "vision_model"):
        inner = getattr(model, name, None)
        if isinstance(inner, nn.Module):
            return _backbone(inner) if name != "vision_model" else inner
    return model


def _layers(model: nn.Module) -> nn.ModuleList:
    base = _backbone(model)
    if isinstance(getattr(base, "layers", None), nn.ModuleList):
        return base.layers  # transformers 5.x
    encoder = getattr(base, "encoder", None)
    for name in ("layer", "layers"):
        if isinstance(getattr(encoder, name, None), nn.ModuleList):
            return getattr(encoder, name)
    raise UserError(f"{type(model).__name__}: no transformer layers found")


# Model types whose embeddings interpolate the position table at every forward, so they take the
# image processor's size even where config.image_size differs (DINOv2: 518 in the config, 224 crops).
INTERPOLATING = ("dinov2", "dinov2_with_registers")
RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL's codes, as image processors store them
# Without an image-processor config (a model built in code): ViTImageProcessor's defaults.
VIT_DEFAULTS = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bilinear", "size": None,
                "crop_pct": 1.0, "crop_mode": "squash"}


def _size_field(size: Any, key: str) -> Optional[int]:
    # a dict in 4.x, a SizeDict in 5.x
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value else None


def read_preprocessing(source: str) -> Optional[dict[str, Any]]:
    """The evaluation preprocessing a model's image-processor config asks for: mean, std,
    resample, and either a resize of the shorter side then a centre crop (crop_pct = crop / side,
    CLIP, DINOv2) or a resize to an exact size (timm's "squash"), then a centre crop where asked
    (DeiT: 256 then 224). None without a config."""
    from transformers import AutoImageProcessor

    try:
        proc = AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError):
        return None
    size, crop = getattr(proc, "size", None), getattr(proc, "crop_size", None)
    side = _size_field(size, "shortest_edge") if size is not None else None
    if getattr(proc, "do_center_crop", False) and crop is not None and side:
        out_hw = (_size_field(crop, "height"), _size_field(crop, "width"))
        crop_pct, crop_mode = out_hw[0] / side, "center"
    elif size is not None and _size_field(size, "height"):
        out_hw, crop_pct = (_size_field(size, "height"), _size_field(size, "width")), 1.0
        if getattr(proc, "do_center_crop", False) and crop is not None and _size_field(crop, "height"):
            # DeiT: resize to 256x256, then the centre 224x224 (timm's squash with crop_pct)
            crop_pct = _size_field(crop, "height") / out_hw[0]
            out_hw = (_size_field(crop, "height"), _size_field(crop, "width"))
        crop_mode = "squash"
    else:
        out_hw, crop_pct, crop_mode = (side, side) if side else None, 1.0, "center"
    return {"mean": tuple(float(v) for v in proc.image_mean), "std": tuple(float(v) for v in proc.image_std),
            "interpolation": RESAMPLE.get(int(getattr(proc, "resample", 2)), "bilinear"),
            "size": out_hw, "crop_pct": crop_pct, "crop_mode": crop_mode}


def _preprocessing(model: nn.Module) -> Optional[dict[str, Any]]:
    """read_preprocessing of the folder or hub id the model came from, read once per model."""
    if not hasattr(model, "st_preprocessing"):
        source = getattr(getattr(model, "config", None), "_name_or_path", "")
        model.st_preprocessing = read_preprocessing(source) if source else None
    return model.st_preprocessing


class HFHost(Host):
    name = "transformers"
    serves = ("a Hugging Face transformers ViT, DeiT, DINOv2 or CLIP vision model")

    SUPPORTED = ("ViTModel", "ViTForImageClassification", "DeiTModel", "DeiTForImageClassification",
                 "DeiTForImageClassificationWithTeacher", "Dinov2Model", "Dinov2ForImageClassification",
                 "Dinov2WithRegistersModel", "Dinov2WithRegistersForImageClassification", "CLIPVisionModel",
                 "CLIPVisionModelWithProjection")

    def owns(self, model: nn.Module) -> bool:
        try:
            from transformers import PreTrainedModel
        except ImportError:
            return False
        return isinstance(model, PreTrainedModel)

    def check_supported(self, model: nn.Module) -> None:
        from .base import original_class

        if isinstance(getattr(model, "sparse_tuning", None), SparseTuningState):
            raise UserError("Sparse-Tuning is already applied to this model; apply it once, to a fresh model")
        name = original_class(model).__name__
        if name not in self.SUPPORTED:
            why = {"Siglip": "it has no class token (token sparsification ranks tokens by the class token's "
                             "attention)", "Swin": "it is not a plain ViT (windowed attention)",
                   "ConvNext": "it is not a transformer", "Beit": "its relative position bias is not supported"}
            reason = next((v for k, v in why.items() if name.startswith(k)), "it is not one of the supported classes")
            raise UserError(f"{name} cannot take Sparse-Tuning: {reason}; supported: {', '.join(self.SUPPORTED)}")
        from .hf_vit import layer_parts

        try:
            [layer_parts(layer) for layer in _layers(model)]
        except AttributeError as e:
            raise UserError(f"{name}: a layer of an unexpected form ({e})") from None

    def knows(self, name: str) -> bool:
        return name.startswith(PREFIX)

    def check_name(self, name: str) -> None:
        if not name.startswith(PREFIX):
            raise UserError(f"{name!r}: transformers models are named hf:ID_OR_DIR")

    def create(self, name: str, pretrained: bool = False, img_size: Optional[int] = None,
               num_classes: Optional[int] = None, device: str | torch.device = "cpu") -> nn.Module:
        from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

        source = name[len(PREFIX):]
        try:
            config = AutoConfig.from_pretrained(source)
        except OSError as e:
            raise UserError(f"cannot read the transformers model {source!r}: {' '.join(str(e).split())[:200]}") from None
        interpolates = config.model_type in INTERPOLATING
        if img_size and not interpolates and img_size != config.image_size:
            if pretrained:
                # config.image_size sizes the position table: loading would start it afresh
                raise UserError(f"--img-size {img_size}: a pretrained {config.model_type} model's position "
                                f"embeddings are for {config.image_size}; transformers resamples them only for "
                                f"DINOv2, so use its own size or --no-pretrained")
            config.image_size = img_size
        if num_classes is not None:
            config.num_labels = max(num_classes, 1)
        auto = AutoModelForImageClassification if config.architectures and any(
            "ForImageClassification" in a for a in config.architectures) or num_classes else AutoModel
        with torch.device(device):
            if pretrained:
                from transformers.utils import logging as hf_logging

                # A head of another class count starts afresh, as asked; transformers' report of it
                # and its loading bar would print on every run, eval and export.
                level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
                hf_logging.set_verbosity_error()
                hf_logging.disable_progress_bar()
                try:
                    model = auto.from_pretrained(source, config=config, ignore_mismatched_sizes=True)
                finally:
                    hf_logging.set_verbosity(level)
                    if bars:
                        hf_logging.enable_progress_bar()
            else:
                model = auto.from_config(config)
        if num_classes == 0:  # no classifier wanted (a segmentation head reads the features): none to train
            for name in ("classifier", "cls_classifier", "distillation_classifier"):
                if isinstance(getattr(model, name, None), nn.Linear):
                    setattr(model, name, nn.Identity())
        # Read once, here: the transforms (data_config) and the input size follow it. An explicit
        # img_size wins over the processor's size.
        preprocessing = read_preprocessing(source)
        if img_size and interpolates:
            preprocessing = {**(preprocessing or VIT_DEFAULTS), "size": (img_size, img_size)}
        elif img_size and preprocessing:
            preprocessing["size"] = None
        model.st_preprocessing = preprocessing
        return model

    def load_weights(self, model: nn.Module, path: str | Path) -> None:
        from safetensors.torch import load_file

        state = load_file(str(path))
        result = model.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if "classifier" not in k and ".adapter." not in k]
        if missing:
            raise UserError(f"{path} does not fit this model: missing {missing[:5]}")

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return _layers(model)

    def width(self, model: nn.Module) -> int:
        return int(_backbone(model).config.hidden_size)

    def num_heads(self, model: nn.Module) -> int:
        return int(_backbone(model).config.num_attention_heads)

    def num_prefix_tokens(self, model: nn.Module) -> int:
        base = _backbone(model)
        emb = base.embeddings
        n = 1 + (getattr(emb, "distillation_token", None) is not None)
        registers = getattr(emb, "register_tokens", None)
        return n + (registers.shape[1] if registers is not None else 0)

    def patch_size(self, model: nn.Module) -> tuple[int, int]:
        p = _backbone(model).config.patch_size
        return (p, p) if isinstance(p, int) else tuple(p)

    def input_size(self, model: nn.Module) -> tuple[int, int, int]:
        c = _backbone(model).config
        s = c.image_size
        hw = (s, s) if isinstance(s, int) else tuple(s)
        processed = (_preprocessing(model) or {}).get("size")
        if processed and c.model_type in INTERPOLATING:
            hw = processed
        return (c.num_channels, *hw)

    def check_input_size(self, model: nn.Module, input_size: tuple[int, int, int]) -> None:
        C, H, W = input_size
        ph, pw = self.patch_size(model)
        if H % ph or W % pw:
            raise UserError(f"image size {H}x{W} is not divisible by the patch size {ph}x{pw}")
        if (C, H, W) != self.input_size(model):
            raise UserError(f"input {C}x{H}x{W} differs from the model's {'x'.join(map(str, self.input_size(model)))}")

    def attention_modules(self, model: nn.Module) -> list[nn.Module]:
        # The patched layers carry the switch (their own attention code reads it); unpatched ones
        # follow transformers' config._attn_implementation.
        return [layer for layer in _layers(model) if hasattr(layer, "fused_attn")]

    def classifier(self, model: nn.Module) -> list[nn.Module]:
        # CLIP's visual_projection maps into the text space: part of the frozen backbone, not a head.
        heads = [getattr(model, n) for n in ("classifier", "cls_classifier", "distillation_classifier")
                 if isinstance(getattr(model, n, None), nn.Module)]
        return heads

    def classifier_classes(self, model: nn.Module) -> int:
        return int(getattr(model.config, "num_labels", 0)) if self.classifier(model) else 0

    def data_config(self, model: nn.Module) -> dict[str, Any]:
        processed = _preprocessing(model) or VIT_DEFAULTS
        return {"input_size": self.input_size(model), **{k: processed[k] for k in (
            "mean", "std", "interpolation", "crop_pct", "crop_mode")}}

    def features(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return _backbone(model)(pixel_values=x).last_hidden_state

    def head(self, model: nn.Module, features: torch.Tensor) -> torch.Tensor:
        return model.classifier(features[:, 0])

    def block_maps(self, model: nn.Module, x: torch.Tensor, blocks: tuple[int, ...]) -> list[torch.Tensor]:
        # output_hidden_states, restored to the full sequence on a patched model (hf_vit's forward
        # hook), then the final norm timm's forward_intermediates(norm=True) applies: layernorm
        # (ViT, DeiT, DINOv2) or CLIP's post_layernorm
        hidden = model(pixel_values=x, output_hidden_states=True).hidden_states
        base = _backbone(model)
        norm = next(m for m in (getattr(base, "layernorm", None), getattr(base, "post_layernorm", None), nn.Identity())
                    if m is not None)
        n = self.num_prefix_tokens(model)
        ph, pw = self.patch_size(model)
        h, w = x.shape[-2] // ph, x.shape[-1] // pw
        return [norm(hidden[b + 1])[:, n:].transpose(1, 2).reshape(x.shape[0], -1, h, w) for b in blocks]

    def patch(self, model: nn.Module, config: SparseTuningConfig) -> SparseTuningState:
        from .hf_vit import patch_layers

        self.check_supported(model)
        return patch_layers(model, _layers(model), self.width(model), self.num_heads(model),
                            self.num_prefix_tokens(model), config)

    def set_grad_checkpointing(self, model: nn.Module, enable: bool = True) -> None:
        if hasattr(model, "sparse_tuning"):
            model.set_grad_checkpointing(enable)  # the layers checkpoint themselves (hf_vit.layer_forward)
        elif not enable:
            (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
        else:
            # Non-reentrant: a frozen embedding gives reentrant checkpointing no input that needs a
            # gradient, and the adapters or LoRA weights inside would get none. 5.x renamed the switch.
            kwargs = {"use_reentrant": False}
            if hasattr(model, "activation_checkpointing_enable"):
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def lora_targets(self, model: nn.Module) -> list[str]:
        from .hf_vit import layer_parts

        attention = layer_parts(_layers(model)[0])[1]
        return ["q_proj", "v_proj"] if hasattr(attention, "q_proj") else ["query", "value"]

    def file_name(self, name: str) -> str:
        import re

        m = re.search(r"(?:^|\.)layers?\.(\d+)\.adapter\.(.+)$", name)
        if m:
            return f"blocks.{m.group(1)}.adapter.{m.group(2)}"
        if name.startswith("classifier."):
            return "head." + name[len("classifier."):]
        return name

    def signature(self, model: nn.Module) -> dict[str, Any]:
        return {"embed_dim": self.width(model), "depth": self.depth(model), "num_heads": self.num_heads(model),
                "num_prefix_tokens": self.num_prefix_tokens(model), "num_classes": self.classifier_classes(model)}
