"""The methods, one module each, found by importing every module of this folder."""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import TYPE_CHECKING, Any, Optional

from ..errors import UserError
from .base import _REGISTRY, Method, TrainHook, register

if TYPE_CHECKING:
    import torch.nn as nn

    from ..core.config import SparseTuningConfig

_loaded = False


def _load() -> dict[str, Method]:
    global _loaded
    if not _loaded:
        for info in pkgutil.iter_modules(__path__):
            if info.name != "base":
                importlib.import_module(f"{__name__}.{info.name}")
        _loaded = True
    return _REGISTRY


def all_methods() -> list[Method]:
    return sorted(_load().values(), key=lambda m: m.order)


def method_names() -> tuple[str, ...]:
    return tuple(m.name for m in all_methods())


def get_method(name: str) -> Method:
    methods = _load()
    if name not in methods:
        raise UserError(f"unknown method {name!r}; expected one of {', '.join(method_names())}")
    return methods[name]


def option_owners() -> dict[str, type]:
    """Each method option's name -> the options dataclass declaring it first. Two methods may
    share a field (the adapter width of adapter and adaptformer) if they give it one default."""
    out: dict[str, type] = {}
    for method in all_methods():
        for f in dataclasses.fields(method.options) if method.options else ():
            if f.name in out:
                other = next(g for g in dataclasses.fields(out[f.name]) if g.name == f.name)
                if other.default != f.default:
                    raise ValueError(f"option {f.name!r} has two defaults ({out[f.name].__name__}, "
                                     f"{method.options.__name__})")
            out.setdefault(f.name, method.options)
    return out


def options_fields() -> list[dataclasses.Field]:
    """Every method's own option fields, once each."""
    return [next(f for f in dataclasses.fields(cls) if f.name == name) for name, cls in option_owners().items()]


def validate_options(values: dict[str, Any]) -> dict[str, Any]:
    """Every method's options, defaults filled in, each method's dataclass checking its own."""
    unknown = sorted(set(values) - set(option_owners()))
    if unknown:
        raise UserError(f"unknown method option(s) {unknown}")
    out = {f.name: values.get(f.name, f.default) for f in options_fields()}
    for method in all_methods():
        method.make_options(out)  # raises ValueError naming a bad field
    return out


def _check_rule_options(keep_rate: Optional[float], fields: dict[str, Any]) -> None:
    """Refuse a rule's options given with another rule (they would be ignored): each rule declares
    the fields it reads (--keep-rate, --sparsify-at and --merge the keep rules', --tome-r and
    --proportional-attention ToMe's). A value equal to the default is not an option given (a
    whole recorded config carries every field)."""
    from ..core.config import SparseTuningConfig

    from ..core.reduction import get_rule, rule_names

    default = SparseTuningConfig()
    rule = fields.get("reduction", default.reduction)
    given = {k for k, v in fields.items() if k != "reduction" and hasattr(default, k)
             and (tuple(v) if isinstance(v, list) else v) != getattr(default, k)}
    if keep_rate is not None and keep_rate != default.keep_rate:
        given.add("keep_rate")
    every_rules_fields = set().union(*(get_rule(name).fields for name in rule_names()))
    foreign = (every_rules_fields - get_rule(rule).fields) & given
    if foreign:
        flags = ", ".join("--" + f.replace("_", "-") for f in sorted(foreign))
        raise UserError(f"{flags} does not apply to --reduction {rule}")


def method_config(name: str, keep_rate: Optional[float] = None, **fields) -> Optional["SparseTuningConfig"]:
    """The Sparse-Tuning or reduction config a method runs with these options; None for a method
    that keeps every token and was given no reduction."""
    _load()
    _check_rule_options(keep_rate, fields)
    return get_method(name).config(keep_rate, fields)


def prepare(model: "nn.Module", name: str, sparse_tuning: Optional["SparseTuningConfig"] = None,
            options: Optional[dict[str, Any]] = None) -> "nn.Module":
    """Apply a method in place; afterwards ``requires_grad`` marks exactly what trains."""
    method = get_method(name)
    if sparse_tuning is None and method.sparse_tuning_config is not None:
        sparse_tuning = method_config(name)
    if sparse_tuning is not None and method.sparse_tuning_config is None:  # a reduction under the method
        if method.reduction == "none":
            raise UserError(f"--reduction does not apply to --method {name}")
        if method.reduction == "before":
            from ..api import apply

            apply(model, sparse_tuning)
    method.prepare(model, sparse_tuning, method.make_options(options))
    return model


__all__ = ["Method", "TrainHook", "all_methods", "get_method", "method_config", "method_names", "option_owners",
           "options_fields", "prepare", "register", "validate_options"]
