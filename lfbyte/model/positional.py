"""Positional encodings: sinusoidal (default), learned, or none."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

POSITIONAL_KINDS = ("sinusoidal", "learned", "none")


class PositionalEncoding(nn.Module):
    """Adds a position signal for positions ``offset .. offset + t - 1`` (``< max_len``).

    Both kinds start at the token embeddings' scale (``init_std`` per coordinate): a unit-amplitude
    sinusoid next to 0.02-std embeddings leaves the byte identity as a 2% ripple on a position vector
    after the first norm, and the model then sat at unigram loss for hundreds of steps (measured:
    4.72 bits/byte after 90 s on model=small, against 2.77 with no positional signal at all).
    """

    def __init__(self, dim: int, max_len: int, kind: str = "sinusoidal", init_std: float = 0.02) -> None:
        super().__init__()
        if kind not in POSITIONAL_KINDS:
            raise ValueError(f"pos_encoding={kind!r} is not one of {POSITIONAL_KINDS}")
        self.kind, self.max_len = kind, max_len
        if kind == "learned":
            self.table = nn.Parameter(torch.randn(max_len, dim) * init_std)
        elif kind == "sinusoidal":
            pos = torch.arange(max_len, dtype=torch.float32)[:, None]
            freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
            table = torch.zeros(max_len, dim)
            table[:, 0::2] = torch.sin(pos * freq)
            table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
            self.register_buffer("table", table * (init_std * math.sqrt(2)), persistent=False)  # RMS = init_std

    def forward(self, x: Tensor, offset: int | Tensor = 0) -> Tensor:
        """x: (b, t, dim) -> x plus the encoding of its positions. A tensor ``offset`` (decoding in a compiled
        or captured step) is read on the device: the caller keeps it below ``max_len``."""
        if self.kind == "none":
            return x
        t = x.shape[1]
        if isinstance(offset, Tensor):
            return x + self.table.index_select(0, offset + torch.arange(t, device=x.device)).to(x.dtype)
        if offset + t > self.max_len:
            raise ValueError(
                f"positions up to {offset + t} exceed seq_len={self.max_len}; "
                "feed at most seq_len bytes (generation slides the window for you)"
            )
        return x + self.table[offset : offset + t].to(x.dtype)
