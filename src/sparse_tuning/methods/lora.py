"""LoRA on the attention input projections, through Hugging Face peft (mergeable for inference)."""
from __future__ import annotations

from dataclasses import dataclass

from .base import Method, check_positive, register, train_only


@dataclass
class LoraOptions:
    lora_rank: int = 8             # lora: rank of the low-rank update of each attention qkv projection
    lora_alpha: float = 8.0        # lora: the update is scaled by alpha / rank

    def __post_init__(self) -> None:
        check_positive(self, "lora_rank")


def _prepare(model, config, options: LoraOptions) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    from ..hosts import host_for

    host = host_for(model)
    targets = host.lora_targets(model)
    inject_adapter_in_model(LoraConfig(r=options.lora_rank, lora_alpha=options.lora_alpha, target_modules=targets),
                            model)
    lora = [m for n, m in model.named_modules() if n.endswith(("lora_A", "lora_B"))]
    train_only(model, lora + host.classifier(model))


def merge_lora(model):
    """Fold the LoRA updates into the projections: inference at the plain model's cost."""
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer) and not module.merged:
            module.merge()
    return model


register(Method("lora", "LoRA on each attention qkv projection (peft); merged for export", _prepare, order=40,
                options=LoraOptions, for_inference=merge_lora))
