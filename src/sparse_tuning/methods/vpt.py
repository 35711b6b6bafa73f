"""VPT-deep: learnable prompt tokens before every block."""
from __future__ import annotations

from dataclasses import dataclass

from .base import Method, check_positive, register, train_only


@dataclass
class VptOptions:
    prompts: int = 10              # vpt: learnable prompt tokens per block

    def __post_init__(self) -> None:
        check_positive(self, "prompts")


def _prepare(model, config, options: VptOptions) -> None:
    from ..hosts import host_for

    host = host_for(model)
    prompts = host.add_deep_prompts(model, options.prompts)
    train_only(model, host.classifier(model))
    prompts.requires_grad_(True)


# Under a reduction the prompts are protected prefix tokens of the reducing blocks: the rules rank,
# keep and merge patches only (reduction "before").
register(Method("vpt", "VPT-deep: learnable prompt tokens before every block", _prepare, order=50,
                options=VptOptions))
