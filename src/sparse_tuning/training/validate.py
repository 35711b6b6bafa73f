"""One type check for every option, wherever it came from (flags, YAML, JSON, config.json):
a value of the wrong type, or a number that is not finite, is one line naming the option."""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Union

from ..errors import UserError


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join("none" if a is type(None) else _describe(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (tuple, list):
        return f"a list of {_describe(typing.get_args(tp)[0])}s"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def fits(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(fits(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return isinstance(value, (tuple, list)) and all(fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if tp is str:
        return isinstance(value, str)
    return True  # a nested dataclass: checked on its own


def check_values(cls: type, values: dict[str, Any], section: str = "") -> None:
    """Raise ValueError for the first value that does not fit its field's type in dataclass ``cls``
    (before the dataclass is built, so its own checks compare values of the right type)."""
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if name in hints and not dataclasses.is_dataclass(value) and not fits(value, hints[name]):
            where = f"{section}.{name}" if section else name
            raise UserError(f"{where}={value!r}: expected {_describe(hints[name])}")
