"""AdaptFormer: a one-input Dense Adapter beside every FFN, scaled, with every token kept."""
from __future__ import annotations

from dataclasses import dataclass

from .base import Method, check_positive, register


@dataclass
class AdaptFormerOptions:
    adapter_bottleneck: int = 64   # hidden width of the adapter and adaptformer methods' adapters
    adapter_scale: float = 0.1     # adaptformer: the scale on its adapter's output

    def __post_init__(self) -> None:
        check_positive(self, "adapter_bottleneck")


def _prepare(model, config, options: AdaptFormerOptions) -> None:
    import dataclasses

    from ..api import apply
    from ..core.config import SparseTuningConfig

    # config: a token reduction to run under it (--reduction), else every token kept
    reduced = config if config is not None else SparseTuningConfig(keep_rate=1.0, sparsify_at=(), reduction="none")
    apply(model, dataclasses.replace(reduced, adapters=True, dense_inputs=(), fusion="down-sum",
                                     bottleneck=options.adapter_bottleneck, scale=options.adapter_scale))


register(Method("adaptformer", "AdaptFormer: a scaled parallel adapter beside each FFN", _prepare, order=30,
                options=AdaptFormerOptions, reduction="own"))
