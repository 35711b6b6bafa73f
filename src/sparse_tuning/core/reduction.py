"""Token-reduction rules: a protocol the hosts call, and a registry of the rules.

A rule decides, block by block, which tokens go on and how the others are folded in; it is
the only code that knows what it reads (the class token's attention, ToMe's keys, the tokens
themselves) and how it plans. A host (hosts/*_vit.py) asks the rule what a block must compute
for it (``needs``), computes that inside its own attention, and passes it on with the tokens
(``BlockTokens``); the rule returns a ``Plan`` or None (nothing removed here). A plan:

- ``apply(x)``: the reduced sequence from x (B, N, C), for the tokens and for anything that
  follows them (earlier adapter outputs): linear in x;
- ``sizes_after(size)``: the original patches each output token holds (ToMe's proportional
  attention reads them), or None where the rule keeps no sizes;
- ``sources()``: (B, N) for each input token, the output token it went to (-1: dropped), the
  map that restores a reduced sequence to the full grid (``restore``, ``compose_sources``);
- ``flops(channels)``: the multiply-adds of the matrix products of ``apply`` on C channels, as
  tools/flops.py counts a model (elementwise work is not counted; what planning costs, the
  scores or ToMe's matching, is counted with the forward that computes it);
- ``detached()``: the same plan without autograd history, kept after the forward.

Adding a rule is one module in ``core/rules/`` that calls ``register_rule``; the registry imports
every module there. The config's fields a rule reads are its ``fields``: given with another rule,
they are refused rather than ignored.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Optional, Protocol

from ..errors import UserError

if TYPE_CHECKING:  # torch is imported where tensors are made: the command line lists rules without it
    from torch import Tensor


@dataclass(frozen=True)
class Needs:
    """What a block computes for its rule, inside its attention."""
    class_scores: bool = False   # the class token's attention over all tokens, averaged over heads (B, N)
    keys: bool = False           # the keys averaged over heads (B, N, D): ToMe's similarity metric
    sizes: bool = False          # proportional attention: log(token size) added to every query's logits

    @property
    def attention(self) -> bool:
        """The block's own attention computation is needed (else the host's module runs as is)."""
        return self.class_scores or self.keys or self.sizes


NOTHING = Needs()


class BlockTokens(NamedTuple):
    """What a rule plans from, after the block's attention and its residual."""
    tokens: "Tensor"                   # (B, N, C)
    num_prefix: int                    # tokens no rule removes: class, registers, VPT's prompts
    class_scores: "Optional[Tensor]"   # (B, N) where needs.class_scores
    keys: "Optional[Tensor]"           # (B, N, D) where needs.keys
    size: "Optional[Tensor]"           # (B, N, 1) patches each token holds once sizes are kept; None: all 1


class Plan(Protocol):
    def apply(self, x: "Tensor") -> "Tensor": ...

    def sizes_after(self, size: "Optional[Tensor]") -> "Optional[Tensor]": ...

    def sources(self) -> "Tensor": ...

    def flops(self, channels: int) -> int: ...

    def detached(self) -> "Plan": ...


class Rule:
    """A token-reduction rule. Subclasses set ``name``, ``help``, ``fields`` and override the
    methods whose default does not fit; ``plan`` is the rule."""

    name: ClassVar[str]
    help: ClassVar[str]                         # one line for --reduction's help
    fields: ClassVar[frozenset[str]] = frozenset()  # the SparseTuningConfig fields it reads
    has_keep_rate: ClassVar[bool] = False       # it keeps a keep_rate share (set_keep_rate, schedules)

    def blocks(self, config: Any, depth: int) -> tuple[int, ...]:
        """The blocks where it may reduce, for a model of ``depth`` blocks (checked against it)."""
        return ()

    def needs(self, config: Any, block: int, depth: int) -> Needs:
        return NOTHING

    def plan(self, config: Any, block: int, depth: int, seen: BlockTokens) -> Optional[Plan]:
        return None

    def keeps_every_token(self, config: Any) -> bool:
        """With these settings nothing is ever removed (keep rate 1, say)."""
        return False

    def removing_nothing(self, config: Any) -> dict[str, Any]:
        """The config fields that make it remove nothing (the every-token pass of self-distillation)."""
        return {}

    def describe(self, config: Any, blocks: Optional[tuple[int, ...]] = None) -> str:
        return self.name


_RULES: dict[str, Rule] = {}
_loaded = False


def register_rule(rule: Rule) -> Rule:
    if rule.name in _RULES:
        raise ValueError(f"reduction rule {rule.name!r} is registered twice")
    _RULES[rule.name] = rule
    return rule


def _load() -> dict[str, Rule]:
    global _loaded
    if not _loaded:
        from . import rules

        _loaded = True
        for info in pkgutil.iter_modules(rules.__path__):
            importlib.import_module(f"{rules.__name__}.{info.name}")
    return _RULES


def rule_names() -> tuple[str, ...]:
    return tuple(_load())


def get_rule(name: str) -> Rule:
    rules = _load()
    if name not in rules:
        raise UserError(f"reduction={name!r}: expected one of {', '.join(rules)}")
    return rules[name]


def restore(x: "Tensor", sources: "Tensor") -> "Tensor":
    """The full sequence (B, N, C) from a reduced one x (B, N', C): each input position takes the
    token it went to (``sources``, (B, N)); a dropped one (-1) is zeros."""
    index = sources.clamp_min(0).unsqueeze(-1).expand(-1, -1, x.shape[-1])
    return x.gather(1, index) * (sources >= 0).unsqueeze(-1).to(x.dtype)


def compose_sources(plans: list[Optional[Plan]], num_tokens: int, batch_size: int, device=None) -> list["Tensor"]:
    """After each block, for every token of the first block's input, the token of that block's
    output holding it (-1: dropped), (B, num_tokens) each: the plans' sources composed."""
    import torch

    where = torch.arange(num_tokens, device=device).expand(batch_size, -1)
    out = []
    for plan in plans:
        if plan is not None:
            step = plan.sources().to(where.device)
            where = torch.where(where >= 0, step.gather(1, where.clamp_min(0)), where)
        out.append(where.clone())
    return out
