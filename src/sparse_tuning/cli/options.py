"""Command-line options derived from the run configuration's dataclasses.

Each flag comes from one field: its name (``--keep-rate``), its type (``Literal`` gives choices,
``bool`` gives ``--x/--no-x``, ``tuple[int, ...]`` comma-separated integers) and its comment,
which is its help text. The defaults are SUPPRESSed, so only the flags a user gives reach the
config: they are one layer above the config file and the preset (``training.config``).

Why argparse and not tyro or simple-parsing: the standard library needs no dependency and starts
in milliseconds (``--help`` must not wait for torch), and the layering above needs to know which
flags were given, which those libraries fold into their defaults.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
import types
import typing
from functools import lru_cache
from typing import Any, Iterable, Literal, Optional, Union

from ..core.config import SparseTuningConfig
from ..core.reduction import get_rule, rule_names
from ..data.options import VideoConfig
from ..methods import all_methods, method_names, option_owners
from ..training.config import RunConfig, SECTIONS, TrainConfig, top_level_fields


@lru_cache(maxsize=None)
def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment: the one ending its line, else the comment lines right above it."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    lines = source.splitlines()
    out = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        trailing = next((comments[n] for n in (node.end_lineno, node.lineno) if n in comments), None)
        if trailing is None:
            above, n = [], node.lineno - 1
            while n in comments and lines[n - 1].lstrip().startswith("#"):
                above.insert(0, comments[n])
                n -= 1
            trailing = " ".join(above)
        out[node.target.id] = trailing
    return out


def _plain(tp: Any) -> Any:
    """The type inside Optional[...] / X | None."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def argument(cls: type, name: str, dest: Optional[str] = None, default: Any = argparse.SUPPRESS,
             **overrides) -> tuple[list[str], dict[str, Any]]:
    """(flags, argparse kwargs) of one dataclass field."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    tp = _plain(typing.get_type_hints(cls)[name])
    flag = "--" + name.replace("_", "-")
    help_text = field_comments(cls).get(name, "")
    kw: dict[str, Any] = {"dest": dest or name, "default": default}
    shown = f.default if f.default is not dataclasses.MISSING else None
    if tp is bool:
        kw["action"] = argparse.BooleanOptionalAction
    else:
        if typing.get_origin(tp) is Literal:
            kw["choices"] = list(typing.get_args(tp))
            kw["type"] = type(kw["choices"][0])
        elif typing.get_origin(tp) is tuple:
            kw["type"], kw["metavar"] = _int_tuple, "I,J,..."
        elif tp in (int, float, str):
            kw["type"] = tp
            kw["metavar"] = {int: "N", float: "X", str: name.split("_")[-1].upper()}[tp]
        if shown not in (None, "") and "(default" not in help_text:
            help_text += f" (default: {shown})"
    if cls is SparseTuningConfig and name == "reduction":  # the registered rules (core/rules/)
        kw.update(choices=list(rule_names()), metavar="RULE", type=str)
        help_text = f"how tokens are reduced: {rule_help()} (default: {shown})"
    kw["help"] = help_text.replace("%", "%%")
    kw.update(overrides)
    return [flag], kw


def rule_help(names: Optional[Iterable[str]] = None) -> str:
    return "; ".join(f"{name} ({get_rule(name).help})" for name in (names or rule_names()))


def add_argument(group, cls: type, name: str, **kw) -> None:
    flags, kwargs = argument(cls, name, **kw)
    group.add_argument(*flags, **kwargs)


def method_help() -> str:
    return "what trains: " + "; ".join(f"{m.name} ({m.help})" for m in all_methods())


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Every option of a run, flat, grouped by section (dests 'section.name' for nested fields)."""
    p.add_argument("--config", help="YAML or JSON file of options (nested as in config.json, or flat); "
                                    "flags override it")
    for f in top_level_fields():
        extra = {"choices": list(method_names()), "help": method_help(), "metavar": "METHOD"} \
            if f.name == "method" else {}
        add_argument(p, RunConfig, f.name, **extra)
    groups = {"sparse_tuning": ("Sparse-Tuning", SparseTuningConfig),
              "video": ("video (kinetics:, ssv2:, frames:, videolist: data)", VideoConfig),
              "train": ("training", TrainConfig)}
    for section in SECTIONS:
        if section == "baseline":
            names = ", ".join(m.name for m in all_methods() if m.options)
            group = p.add_argument_group(f"the other methods' options ({names})")
            for name, owner in option_owners().items():
                add_argument(group, owner, name, dest=f"baseline.{name}")
            continue
        title, cls = groups[section]
        group = p.add_argument_group(title)
        for f in dataclasses.fields(cls):
            add_argument(group, cls, f.name, dest=f"{section}.{f.name}")


def option_layers(args: argparse.Namespace) -> list[dict[str, Any]]:
    """(config file, flags) as option layers for training.config.resolve_config."""
    from ..training.records import load_config_file

    top = {f.name for f in top_level_fields()}
    flags: dict[str, Any] = {}
    for key, value in vars(args).items():
        section, dot, name = key.partition(".")
        if dot and section in SECTIONS:
            flags.setdefault(section, {})[name] = value
        elif key in top:
            flags[key] = value
    file_layer = load_config_file(args.config) if getattr(args, "config", None) else {}
    return [file_layer, flags]


def given_run_options(args: argparse.Namespace) -> list[str]:
    """The run options given as flags (for commands that take none with --resume)."""
    top = {f.name for f in top_level_fields()}
    return [k for k in vars(args) if k in top or k.partition(".")[0] in SECTIONS]


def add_model_options(p: argparse.ArgumentParser, names: Iterable[str], **defaults: Any) -> None:
    """The run options that say which model to build, for commands that build one without a run
    (flops, bench, visualize): the same flags and help as train's, with these commands' defaults."""
    where = {f.name: RunConfig for f in top_level_fields()}
    where.update({f.name: SparseTuningConfig for f in dataclasses.fields(SparseTuningConfig)})
    where.update({f.name: VideoConfig for f in dataclasses.fields(VideoConfig)})
    where.update({f.name: TrainConfig for f in dataclasses.fields(TrainConfig)})
    for name in names:
        default = defaults.get(name)
        kw: dict[str, Any] = {"default": default}
        if default is not None:
            kw["help"] = field_comments(where[name]).get(name, "").split(" (default")[0] + f" (default: {default})"
        add_argument(p, where[name], name, **kw)
