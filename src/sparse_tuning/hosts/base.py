"""What a host is: the one place that reads a host library's model (timm's and transformers' ViTs).

Everything built on the hosts (methods, data, training, tools, CLI) asks the model's host, found
with ``hosts.host_for(model)`` or ``hosts.host_named(name)``, instead of reading attributes such
as ``patch_embed`` or ``cls_token`` itself. A host is two things: what its models are
(``ModelFacts``: the small protocol the rest reads) and how they are made and loaded
(``ModelZoo``). Adding a host is one module implementing both as a ``Host`` and one line in
``hosts/__init__.py``.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn

from ..core.config import SparseTuningConfig
from ..core.state import SparseTuningState
from ..errors import UserError


class ModelFacts:
    """What a model is, and the changes the methods make to it: the protocol the code built on the
    hosts reads a model through (its blocks, width, heads and prefix tokens, its attention
    modules, its head) and the places the methods change (Sparse-Tuning's blocks, adapters,
    prompts, LoRA targets). The blocks a host patches call the reduction protocol
    (core/reduction.py) inside their own attention."""

    name: str = ""
    serves: str = ""  # what it serves, for the error that refuses another model

    def image_model(self, model: nn.Module) -> nn.Module:
        """The image model inside this host's video wrapper; the model itself otherwise."""
        return model

    # --- which models -----------------------------------------------------------------------
    def owns(self, model: nn.Module) -> bool:
        """Whether ``model`` is one of this host's models (patched or not)."""
        raise NotImplementedError

    def check_supported(self, model: nn.Module) -> None:
        """Raise UserError naming why the model cannot take Sparse-Tuning."""
        raise NotImplementedError

    # --- facts ---------------------------------------------------------------------------------
    def blocks(self, model: nn.Module) -> nn.Sequential:
        raise NotImplementedError

    def depth(self, model: nn.Module) -> int:
        return len(self.blocks(model))

    def width(self, model: nn.Module) -> int:
        raise NotImplementedError

    def num_heads(self, model: nn.Module) -> int:
        raise NotImplementedError

    def num_prefix_tokens(self, model: nn.Module) -> int:
        """Class (and register / distillation) tokens before the patch tokens; never sparsified."""
        raise NotImplementedError

    def patch_size(self, model: nn.Module) -> tuple[int, int]:
        raise NotImplementedError

    def input_size(self, model: nn.Module) -> tuple[int, int, int]:
        """(channels, height, width) the model is built for."""
        raise NotImplementedError

    def check_input_size(self, model: nn.Module, input_size: tuple[int, int, int]) -> None:
        """Raise UserError if the model cannot take images of (C, H, W)."""
        raise NotImplementedError

    def attention_modules(self, model: nn.Module) -> list[nn.Module]:
        """Every attention module; each has timm's ``fused_attn`` switch (False: the explicit
        softmax path, which the FLOP count and the parity tests use)."""
        raise NotImplementedError

    def classifier(self, model: nn.Module) -> list[nn.Module]:
        """The classification head(s)."""
        raise NotImplementedError

    def signature(self, model: nn.Module) -> dict[str, Any]:
        """What an adapter file must agree with (class, embed_dim, depth, num_heads,
        num_prefix_tokens, num_classes)."""
        return {"class": original_class(model).__name__, "embed_dim": self.width(model),
                "depth": self.depth(model), "num_heads": self.num_heads(model),
                "num_prefix_tokens": self.num_prefix_tokens(model),
                "num_classes": int(self.classifier_classes(model))}

    def classifier_classes(self, model: nn.Module) -> int:
        raise NotImplementedError

    def file_name(self, name: str) -> str:
        """A trainable parameter's name in an adapter file, the same on every host: timm's
        (``blocks.N.adapter...``, ``head...``), so a file moves between hosts."""
        return name

    def features(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The final tokens (B, N, C) before pooling and head."""
        raise NotImplementedError

    def block_maps(self, model: nn.Module, x: torch.Tensor, blocks: tuple[int, ...]) -> list[torch.Tensor]:
        """The outputs of ``blocks`` as (B, C, h, w) maps over the patch grid, after the final
        norm, restored to the full grid on a reduced model (dense prediction reads them)."""
        raise UserError(f"dense prediction is not available on {self.name} models yet")

    def head(self, model: nn.Module, features: torch.Tensor) -> torch.Tensor:
        """Logits from ``features``: pooling, then the classifier."""
        raise NotImplementedError

    # --- changes ----------------------------------------------------------------------------
    def patch(self, model: nn.Module, config: SparseTuningConfig) -> SparseTuningState:
        """Sparse-Tuning in place: blocks that sparsify after their attention (whose class-token
        scores they compute alongside it) and a Dense Adapter beside each FFN; returns the state."""
        raise NotImplementedError

    def add_ffn_adapters(self, model: nn.Module, bottleneck: int) -> list[nn.Module]:
        """A sequential bottleneck adapter on each FFN's output (Houlsby); returns them."""
        raise UserError(f"--method adapter is not available on {self.name} models")

    def add_deep_prompts(self, model: nn.Module, num_prompts: int) -> nn.Parameter:
        """VPT-deep prompt tokens before every block; returns the (depth, n, C) parameter."""
        raise UserError(f"--method vpt is not available on {self.name} models")

    def lora_targets(self, model: nn.Module) -> list[str]:
        """Module names LoRA adapts (the attention input projections)."""
        raise NotImplementedError

    def set_grad_checkpointing(self, model: nn.Module, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass: less memory, more time (the
        gradients are the same). Works with and without Sparse-Tuning applied."""
        raise NotImplementedError

    def video_model(self, model: nn.Module, frames: int, layout: str, tubelet: int) -> nn.Module:
        """The image model wrapped for (B, C, T, H, W) clips."""
        raise UserError(f"video is not available on {self.name} models")




class ModelZoo:
    """How a host's models are made and loaded: by name (from its library or hub), from a local
    checkpoint, and with the preprocessing their weights expect."""

    def knows(self, name: str) -> bool:
        """Whether the host builds a model of this name."""
        raise NotImplementedError

    def check_name(self, name: str) -> None:
        """Raise UserError (with close names) if the host has no model of that name."""
        raise NotImplementedError

    def create(self, name: str, pretrained: bool = False, img_size: Optional[int] = None,
               num_classes: Optional[int] = None, device: str | torch.device = "cpu") -> nn.Module:
        """A model by name; ``device="meta"`` builds the architecture with no memory and no time."""
        raise NotImplementedError

    def load_weights(self, model: nn.Module, path: str) -> None:
        """A local checkpoint into the backbone; a classifier of another shape is left out."""
        raise NotImplementedError

    def data_config(self, model: nn.Module) -> dict[str, Any]:
        """Preprocessing of the weights: input_size, mean, std, interpolation, crop_pct, crop_mode."""
        raise NotImplementedError


class Host(ModelFacts, ModelZoo):
    """A host library: what its models are (``ModelFacts``) and how they are made (``ModelZoo``)."""


_model_classes: dict[tuple[type, type], type] = {}


class _SparseTuningModel:
    """Mixed into the model's own class (ToMe's way: the model changes class, its state-dict keys
    stay). set_grad_checkpointing reaches our blocks container: timm's checkpoint_seq would call
    the blocks one by one and lose the adapter outputs passed between them, so the flag is kept
    on ``model.sparse_tuning`` and honoured per block there."""

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.sparse_tuning.grad_checkpointing = enable

    def __reduce_ex__(self, protocol):
        # The class is made at runtime, so pickle cannot find it by name: pickle the original
        # (importable) class instead and rebuild the subclass on loading (torch.save(model)).
        return _rebuild, (original_class(self), type(self).__mro__[1]), self.__getstate__()


def original_class(model: nn.Module) -> type:
    """The model's class before Sparse-Tuning patched it (its own class if unpatched)."""
    cls = type(model)
    if issubclass(cls, _SparseTuningModel):
        return next(c for c in cls.__mro__[1:] if not issubclass(c, _SparseTuningModel))
    return cls


def _rebuild(base: type, mixin: type = _SparseTuningModel):
    cls = sparse_tuning_class(base, mixin)
    return cls.__new__(cls)


def sparse_tuning_class(cls: type, mixin: type = _SparseTuningModel) -> type:
    """The subclass of the model's class with ``mixin`` (``_SparseTuningModel`` or a host's
    subclass of it) mixed in: one per class and mixin."""
    if (cls, mixin) not in _model_classes:
        _model_classes[cls, mixin] = type(f"SparseTuning{cls.__name__}", (mixin, cls), {})
    return _model_classes[cls, mixin]
