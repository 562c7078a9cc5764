"""Per-position channel mixing: a SwiGLU MLP over features."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ChannelMixing(nn.Module):
    """``y = W_out (SiLU(W_a x) ⊙ W_b x)``; ``W_a`` and ``W_b`` are fused into one matmul."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.w_in = nn.Linear(dim, 2 * hidden, bias=False)
        self.w_out = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.w_in(x).chunk(2, dim=-1)
        return self.w_out(F.silu(a) * b)
