"""The Dense Adapter: a bottleneck adapter fed by the current tokens and by earlier adapters."""
from __future__ import annotations

from typing import Sequence

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class DenseAdapter(nn.Module):
    """a = W_up(ReLU(sum_i W_down_i(input_i))) for fusion "down-sum" (the method).

    inputs[0] is the block's FFN input x_n; the others are earlier adapters' outputs, already
    brought to x_n's token sequence. Variants for the paper's fusion ablation:
    "input-sum" sums the inputs and shares one down-projection; "up-sum" runs a whole
    adapter (down, ReLU, up) per input and sums their outputs.
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
            raise ValueError(f"fusion={fusion!r}: expected one of down-sum, input-sum, up-sum")
        for up in self.up.modules():
            if isinstance(up, nn.Linear):
                nn.init.zeros_(up.weight)
                nn.init.zeros_(up.bias)

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        B, N, C = inputs[0].shape
        if len(inputs) != self.num_inputs:
            raise ValueError(f"this adapter takes {self.num_inputs} inputs, got {len(inputs)}")
        if self.fusion == "down-sum":
            h = self.down[0](inputs[0])
            for down, x in zip(self.down[1:], inputs[1:]):
                h = h + down(x)
            return self.up(F.relu(h))
        if self.fusion == "input-sum":
            return self.up(F.relu(self.down(sum(inputs[1:], inputs[0]))))
        out = self.up[0](F.relu(self.down[0](inputs[0])))
        for down, up, x in zip(self.down[1:], self.up[1:], inputs[1:]):
            out = out + up(F.relu(down(x)))
        return out

    def extra_repr(self) -> str:
        return f"inputs={self.num_inputs}, fusion={self.fusion}"
