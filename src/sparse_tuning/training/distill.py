"""Accuracy recovery for token-reducing models by distillation: a KL term that pulls the
reduced model's logits towards a teacher's, beside the cross-entropy.

- self-distillation (``self_distill``, after DyT's teacher): the teacher is the same model with
  every token kept, in evaluation mode, computed under ``no_grad`` in the same step: the reduced
  pass learns what the full pass would say, at the cost of one more forward (no backward) per
  step. The full pass gets no cross-entropy of its own, so early in training it teaches an
  untrained prediction: on the suite (benchmarks/suite) it costs 5-6 points;
- a trained run as teacher (``teacher``: any method's run folder, e.g. LoRA on every token),
  frozen, in evaluation mode, also under ``no_grad``.

Both may be on at once; each adds ``weight * T^2 * KL(teacher || student)`` at temperature T
(Hinton et al.: T^2 keeps the gradient's scale as T changes).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError
from ..hosts import logits_of


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch."""
    t = float(temperature)
    return F.kl_div(F.log_softmax(student.float() / t, -1), F.log_softmax(teacher.float() / t, -1),
                    reduction="batchmean", log_target=True) * t * t


@contextmanager
def every_token(model: nn.Module) -> Iterator[None]:
    """The model with its token reduction off (the rule's own settings that remove nothing: keep
    rate 1, ToMe r 0, ...), restored afterwards."""
    st = getattr(model, "sparse_tuning", None)
    if st is None:
        raise UserError("self-distillation needs a model that reduces tokens (--method sparse-tuning or a --reduction)")
    off = st.config.rule.removing_nothing(st.config)
    saved = {name: getattr(st.config, name) for name in off}
    for name, value in off.items():
        setattr(st.config, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(st.config, name, value)


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """The model as inference runs it (dropout and stochastic depth off), its mode restored after:
    the every-token teacher is the model a user would deploy, not a noisy draw of it."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class Distillation:
    """The distillation terms of one run: ``loss(model, images, logits)`` after the student's
    forward (its teachers' passes run inside, without gradients)."""

    def __init__(self, self_weight: float = 0.0, teacher: Optional[nn.Module] = None, teacher_weight: float = 0.0,
                 temperature: float = 1.0) -> None:
        self.self_weight, self.teacher, self.teacher_weight = self_weight, teacher, teacher_weight
        self.temperature = temperature
        if teacher is not None:
            teacher.eval().requires_grad_(False)

    def describe(self) -> str:
        parts = ([f"self (every-token pass, weight {self.self_weight:g})"] if self.self_weight else []) + \
                ([f"teacher run (weight {self.teacher_weight:g})"] if self.teacher is not None else [])
        return (" + ".join(parts) + f", temperature {self.temperature:g}; one more forward per step per teacher, "
                "without gradients")

    @property
    def active(self) -> bool:
        return bool(self.self_weight) or self.teacher is not None

    def loss(self, model: nn.Module, images: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
        total = student.new_zeros(())
        if self.self_weight:
            with torch.no_grad(), every_token(model), evaluation_mode(model):
                full = logits_of(model(images))
            total = total + self.self_weight * distill_loss(student, full, self.temperature)
        if self.teacher is not None:
            with torch.no_grad():
                taught = logits_of(self.teacher(images))
            total = total + self.teacher_weight * distill_loss(student, taught, self.temperature)
        return total
