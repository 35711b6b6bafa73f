"""The Dense Adapter: a bottleneck adapter fed by the current tokens and by earlier adapters."""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserError


class FactoredOutput(NamedTuple):
    """An adapter output a (B, N, C) kept as ``coeffs @ basis.T``, with r+1 << C numbers per token.

    coeffs (B, N, r+1): the adapter's bottleneck activations and, last, each token's mass (1 for
    an ordinary token; the sum of its merge weights for a fused one). basis (C, r+1): the
    up-projection's weight and, last, its bias. A later adapter only ever applies a linear map
    W to a (its down-projections), so it can use ``coeffs @ (W @ basis).T`` instead: r+1 numbers
    per token to read, gather and merge rather than C. Token sparsification is linear in the
    tokens, so applying a step to ``coeffs`` gives the coefficients of the stepped output, mass
    included (which is why the bias rides along as a coefficient).
    """

    coeffs: Tensor
    basis: Tensor

    def project(self, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
        """F.linear(a, weight, bias) without forming a: (B, N, out)."""
        return F.linear(self.coeffs, weight @ self.basis.to(weight.dtype), bias)

    def dense(self) -> Tensor:
        return F.linear(self.coeffs, self.basis)

    def add_to_(self, out: Tensor, alpha: float = 1.0) -> Tensor:
        """out += alpha * a in place, in out's dtype: one GEMM accumulating into out, with no
        (B, N, C) temporary for a. out must be a tensor no one else reads."""
        B, N, C = out.shape
        coeffs = self.coeffs.to(out.dtype).reshape(B * N, -1)
        out.view(B * N, C).addmm_(coeffs, self.basis.to(out.dtype).t(), alpha=alpha)
        return out


AdapterInput = Union[Tensor, FactoredOutput]


class DenseAdapter(nn.Module):
    """a = W_up(ReLU(sum_i W_down_i(input_i))) for fusion "down-sum" (the method).

    inputs[0] is the block's FFN input x_n; the others are earlier adapters' outputs, already
    brought to x_n's token sequence, as tensors or in factored form. Variants for the paper's
    fusion ablation: "input-sum" sums the inputs and shares one down-projection; "up-sum" runs
    a whole adapter (down, ReLU, up) per input and sums their outputs.
    Every up-projection starts at zero, so a fresh adapter adds nothing.
    """

    def __init__(self, dim: int, bottleneck: int, num_inputs: int = 1, fusion: str = "down-sum",
                 device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.num_inputs = num_inputs
        self.fusion = fusion
        if fusion == "down-sum":
            self.down = nn.ModuleList(nn.Linear(dim, bottleneck, **dd) for _ in range(num_inputs))
            self.up = nn.Linear(bottleneck, dim, **dd)
        elif fusion == "input-sum":
            self.down = nn.Linear(dim, bottleneck, **dd)
            self.up = nn.Linear(bottleneck, dim, **dd)
        elif fusion == "up-sum":
            self.down = nn.ModuleList(nn.Linear(dim, bottleneck, **dd) for _ in range(num_inputs))
            self.up = nn.ModuleList(nn.Linear(bottleneck, dim, **dd) for _ in range(num_inputs))
        else:
            raise UserError(f"fusion={fusion!r}: expected one of down-sum, input-sum, up-sum")
        for up in self._ups():
            nn.init.zeros_(up.weight)
            nn.init.zeros_(up.bias)

    def _ups(self) -> list[nn.Linear]:
        return list(self.up) if isinstance(self.up, nn.ModuleList) else [self.up]

    def activations(self, inputs: Sequence[AdapterInput]) -> list[Tensor]:
        """The bottleneck activations (after ReLU): one (B, N, b) per up-projection."""
        B, N, C = inputs[0].shape
        if len(inputs) != self.num_inputs:
            raise UserError(f"this adapter takes {self.num_inputs} inputs, got {len(inputs)}")
        if self.fusion == "up-sum":
            return [F.relu(_linear(down, x)) for down, x in zip(self.down, inputs)]
        if self.fusion == "down-sum":
            h = _linear(self.down[0], inputs[0])
            for down, x in zip(self.down[1:], inputs[1:]):
                h = h + _linear(down, x)
            return [F.relu(h)]
        # input-sum: W (x + sum a_i) + b; factored inputs are projected apart (W is linear).
        dense = [x for x in inputs if not isinstance(x, FactoredOutput)]
        h = self.down(sum(dense[1:], dense[0]))
        for x in inputs:
            if isinstance(x, FactoredOutput):
                h = h + x.project(self.down.weight)
        return [F.relu(h)]

    def forward(self, inputs: Sequence[AdapterInput]) -> Tensor:
        """The adapter output (B, N, C)."""
        out = None
        for up, h in zip(self._ups(), self.activations(inputs)):
            out = up(h) if out is None else out + up(h)
        return out

    def forward_factored(self, inputs: Sequence[AdapterInput]) -> FactoredOutput:
        """The same output in factored form (see FactoredOutput); ``.dense()`` equals forward()."""
        hs = self.activations(inputs)
        ups = self._ups()
        mass = torch.ones_like(hs[0][..., :1])
        bias = ups[0].bias if len(ups) == 1 else torch.stack([u.bias for u in ups]).sum(0)
        basis = torch.cat([u.weight for u in ups] + [bias.unsqueeze(1)], dim=1)
        return FactoredOutput(torch.cat(hs + [mass], dim=-1), basis)

    def extra_repr(self) -> str:
        return f"inputs={self.num_inputs}, fusion={self.fusion}"


def _linear(layer: nn.Linear, x: AdapterInput) -> Tensor:
    if isinstance(x, FactoredOutput):
        return x.project(layer.weight, layer.bias)
    return layer(x)


def follow(a: AdapterInput, plan) -> AdapterInput:
    """An earlier adapter output (tensor or factored) after the tokens' reduction: the same plan
    (core/reduction.py), whose apply is linear in the tokens, so the factored form follows
    through its coefficients, the mass column included."""
    if isinstance(a, FactoredOutput):
        return a._replace(coeffs=plan.apply(a.coeffs))
    return plan.apply(a)
