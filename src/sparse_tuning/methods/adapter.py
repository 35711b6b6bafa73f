"""Sequential adapters (Houlsby): a bottleneck adapter on each FFN's output."""
from __future__ import annotations

from dataclasses import dataclass

from .base import Method, check_positive, register, train_only


@dataclass
class AdapterOptions:
    adapter_bottleneck: int = 64   # hidden width of the adapter and adaptformer methods' adapters

    def __post_init__(self) -> None:
        check_positive(self, "adapter_bottleneck")


def _prepare(model, config, options: AdapterOptions) -> None:
    from ..hosts import host_for

    host = host_for(model)
    adapters = host.add_ffn_adapters(model, options.adapter_bottleneck)
    train_only(model, adapters + host.classifier(model))


# Under a reduction the host puts the adapters into the reducing blocks (reduction "before").
register(Method("adapter", "sequential bottleneck adapters after each FFN (Houlsby)", _prepare, order=20,
                options=AdapterOptions))
