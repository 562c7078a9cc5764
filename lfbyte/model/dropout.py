"""Dropout whose mask is cheap on a CPU: 15 random bits per element, two elements per generator draw.

``nn.Dropout`` draws one float per element: ~5 ns each on a CPU core through ``bernoulli_``, and compiled by
inductor a 10-round Philox per element in scalar code. Here one ``random_()`` call fills half as many int32s as
there are elements (each holds 31 uniform bits) and every element keeps its own 15 of them: for a (8, 128, 96)
tensor the draw takes ~80 us where ``F.dropout``'s forward takes ~540 us. The draw sits in a custom op, so a
compiled graph calls it as one kernel (tagged random: never recomputed in the backward, so the backward uses the
forward's mask) and fuses the rest. On the AMX host, one thread, LF's compiled 10-minute step at 128 bytes took
53.2 ms without dropout, 69.1 with ``nn.Dropout(0.1)`` and 61.9 with this; the GPT's eager step 53.6 and 53.9
(eager, the elementwise passes cost what the draw saves; experiments/cpu_speed/dropout.log). ``p`` is rounded to
a multiple of 2**-15 and the kept values scaled by the exact inverse of the kept fraction, so the expectation is
unchanged. Off the CPU (CUDA's compiled RNG is already fast) it is ``F.dropout``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_BITS = 15  # per element: bits 0-14 and 16-30 of each int32 draw (``random_()`` fills [0, 2**31))


@torch.library.custom_op("lfbyte::keep_mask", mutates_args=(), device_types="cpu",
                         tags=(torch.Tag.nondeterministic_seeded,))
def keep_mask(seed: Tensor, n: int, drop: int) -> Tensor:
    """``n`` booleans, each False with probability ``drop / 2**15``, drawn from a generator seeded with ``seed``."""
    gen = torch.Generator(seed.device).manual_seed(int(seed))
    bits = torch.empty((n + 1) // 2, dtype=torch.int32, device=seed.device).random_(generator=gen)
    return (bits.view(torch.int16)[:n] & ((1 << _BITS) - 1)) >= drop


@keep_mask.register_fake
def _(seed: Tensor, n: int, drop: int) -> Tensor:
    return torch.empty(n, dtype=torch.bool, device=seed.device)


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """As ``F.dropout(x, p, training)``, with ``p`` rounded to a multiple of 2**-15 on the CPU."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    drop = round(p * (1 << _BITS))
    # the seed comes from the default generator through one of aten's random ops: a compiled graph keeps every
    # such draw (its CSE merges calls with equal arguments, and knows only aten's random ops), so no two sites share
    # a mask, and torch.manual_seed and the checkpoint's RNG state reproduce them
    seed = torch.randint(1 << 62, (), device=x.device)
    return x * keep_mask(seed, x.numel(), drop).view(x.shape) * ((1 << _BITS) / ((1 << _BITS) - drop))


class Dropout(nn.Module):
    """``nn.Dropout(p)`` with the cheap CPU mask of :func:`dropout`; no parameters, so checkpoints are unchanged."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
