"""Linear probing: the frozen backbone's features, a trained classifier."""
from __future__ import annotations

from .base import Method, register, train_only


def _prepare(model, config, options) -> None:
    from ..hosts import host_for

    train_only(model, host_for(model).classifier(model))


register(Method("linear", "linear probe: only the classifier trains", _prepare, order=10, lr=1e-2))
