"""What a method is: how a model is prepared for fine-tuning, and so which of its parameters train.

A method is one module in this folder that calls ``register(Method(...))``; the registry imports
every module here, so adding a method is adding one file. The training loop knows nothing of
methods: it trains what has ``requires_grad`` and calls the method's hooks.

Method modules import no torch when they load (only inside their functions): the command line
lists the methods and their options, and refuses a wrong one, without loading torch. They reach
the model only through its host (``hosts.host_for``), never through a host's attributes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

from ..errors import UserError

if TYPE_CHECKING:
    import torch.nn as nn

    from ..core.config import SparseTuningConfig


class TrainHook:
    """A method's say in the training loop (a schedule): called around steps and evaluations."""

    def before_step(self, step: int) -> None:
        """Before optimizer step ``step`` (0-based, global)."""

    def before_eval(self) -> None:
        """Before an evaluation: put the model as it will be used."""

    def after_eval(self) -> None:
        """After an evaluation: back to the training schedule."""

    def metrics(self) -> dict[str, float]:
        """Values the metrics log records at each logged step."""
        return {}


def keep_rate_at(step: int, warm_steps: int, target: float) -> float:
    """EViT-style keep-rate warmup: 1 at step 0, linearly down to the target."""
    if warm_steps <= 0:
        return target
    return 1.0 - (1.0 - target) * min(1.0, step / warm_steps)


class KeepRateSchedule(TrainHook):
    """The keep rate each training step runs at, for any model that reduces tokens by a keep rate
    (``model.sparse_tuning``); evaluation and the end of training use the configured rate.

    - annealed (``keep_rate_warmup`` epochs): from 1 down to the configured rate;
    - random (``keep_rate_random`` = low > 0): each step draws a rate uniformly from [low, 1], so one
      trained model serves that range at inference; with a warmup too, ``low`` itself anneals from 1.
      The draw is a function of (seed, step): a resumed run draws what the uninterrupted one did.
    """

    def __init__(self, state, warm_steps: int, random_low: float = 0.0, seed: int = 0) -> None:
        self.state, self.warm_steps, self.target = state, warm_steps, state.keep_rate
        self.random_low, self.seed = random_low, seed

    def before_step(self, step: int) -> None:
        if not self.random_low:
            self.state.keep_rate = keep_rate_at(step, self.warm_steps, self.target)
            return
        import torch

        low = keep_rate_at(step, self.warm_steps, self.random_low)
        u = torch.rand((), generator=torch.Generator().manual_seed(self.seed * 1_000_003 + step)).item()
        self.state.keep_rate = min(1.0, low + (1.0 - low) * u)

    def before_eval(self) -> None:
        self.training_rate, self.state.keep_rate = self.state.keep_rate, self.target

    def after_eval(self) -> None:
        self.state.keep_rate = self.training_rate

    def metrics(self) -> dict[str, float]:
        return {"keep_rate": self.state.keep_rate}


def keep_rate_schedule(model: "nn.Module", train_config: Any, steps_per_epoch: int) -> TrainHook:
    """Every method's train hook: the keep-rate schedule where the model reduces tokens by a keep
    rate, nothing otherwise (the run's config refuses a schedule that cannot apply)."""
    state = getattr(model, "sparse_tuning", None)
    if state is None or not state.sparsify_at:  # the keep rules' blocks: none without a keep rate
        return TrainHook()
    return KeepRateSchedule(state, round(train_config.keep_rate_warmup * steps_per_epoch),
                            train_config.keep_rate_random, train_config.seed)


@dataclass(frozen=True)
class Method:
    name: str
    help: str                               # one line: --method's help and `sparse-tuning methods`
    # Changes the model in place and sets requires_grad on exactly what trains:
    # prepare(model, sparse_tuning_config_or_None, options) where options is this method's dataclass.
    prepare: Callable[..., None]
    order: int                              # place in listings and the benchmark (cheapest first)
    options: Optional[type] = None          # dataclass of the method's own options (flags, config keys)
    # The SparseTuningConfig the method runs, from the user's keep rate and Sparse-Tuning fields;
    # None: the method ignores those fields (and a keep rate is an error).
    sparse_tuning_config: Optional[Callable[..., "SparseTuningConfig"]] = None
    reduces_tokens: bool = False            # it sparsifies tokens while training (--keep-rate-warmup applies)
    saves_adapters: bool = False            # the run also writes the portable adapters.safetensors
    trains_backbone: bool = False           # every backbone weight moves (recipes give it a lower lr)
    # The default peak learning rate (--lr), from benchmarks/real's pilot (DINOv2 ViT-S, AdamW, batch
    # 32-64): what trains decides it, a head alone takes 1e-2, every weight 3e-5, adapters 1e-3.
    lr: float = 1e-3
    without_adapters: Optional[str] = None  # the method that --no-adapters makes of this one
    for_inference: Optional[Callable[["nn.Module"], "nn.Module"]] = None  # before export (merge LoRA)
    train_hook: Callable[..., TrainHook] = keep_rate_schedule  # train_hook(model, train_config, steps_per_epoch)
    # How a token reduction (--reduction) reaches a method without a Sparse-Tuning config of its
    # own: "before" (the model is reduced first, Sparse-Tuning without adapters, then the method
    # changes it), "own" (prepare receives the config and applies it itself), "none" (refused).
    reduction: str = "before"

    def config(self, keep_rate: Optional[float], fields: dict[str, Any]) -> Optional["SparseTuningConfig"]:
        """The config this method runs with the user's keep rate and Sparse-Tuning fields: its own
        (``sparse_tuning_config``), or the reduction it was given (``reduction_under``)."""
        if self.sparse_tuning_config is not None:
            return self.sparse_tuning_config(keep_rate, fields)
        return reduction_under(self, keep_rate, fields)

    def make_options(self, values: Optional[dict[str, Any]] = None) -> Any:
        """This method's options from a dict of every method's options (others ignored)."""
        if self.options is None:
            return None
        values = values or {}
        return self.options(**{f.name: values[f.name] for f in dataclasses.fields(self.options) if f.name in values})


def reduction_under(method: Method, keep_rate: Optional[float], fields: dict[str, Any]) -> Optional["SparseTuningConfig"]:
    """A method without a config of its own: none without a reduction; with one (LoRA with ToMe,
    EViT's full fine-tuning), the reduction's own fields and no Dense Adapters."""
    from ..core.config import SparseTuningConfig

    if fields.get("reduction", "none") == "none":
        if keep_rate is not None:
            raise UserError(f"--keep-rate does not apply to --method {method.name} (it keeps every token; "
                            "a --reduction reduces them)")
        return None
    if method.reduction == "none":
        takers = ", ".join(m.name for m in sorted(_REGISTRY.values(), key=lambda m: m.order) if m.reduction != "none")
        raise UserError(f"--reduction does not apply to --method {method.name} (a reduction works with {takers})")
    return SparseTuningConfig(**{**fields, **({} if keep_rate is None else {"keep_rate": keep_rate}), "adapters": False})


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in _REGISTRY:
        raise ValueError(f"method {method.name!r} is registered twice")
    _REGISTRY[method.name] = method
    return method


def train_only(model: "nn.Module", modules: Iterable["nn.Module"]) -> None:
    """Freeze the model, then unfreeze ``modules``: what trains is declared, not guessed."""
    model.requires_grad_(False)
    for m in modules:
        m.requires_grad_(True)


def check_positive(options: Any, *names: str) -> None:
    for name in names:
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{name}={value!r}: expected an integer >= 1")
