"""Input-adaptive linear layers and the causal conditioning signal that drives them."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .causal_conv import causal_conv_silu


class CausalConditioner(nn.Module):
    """Causal summary ``c_t`` of the bytes ``<= t`` that AdaptiveLinear layers condition on.

    ``c_t = SiLU(sum_{i<K} w_i ⊙ u_{t-i})`` with ``u = P x``: a projection to
    ``adapt_dim`` followed by a short depthwise causal convolution of width ``K``.
    It reads the residual stream, which already carries long-range context from
    the token mixers of earlier layers, so a short window is enough here; in
    exchange it is exact to update one byte at a time (the state is the last
    ``K-1`` projected inputs).
    """

    def __init__(self, dim: int, adapt_dim: int, kernel_size: int = 4) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.proj = nn.Linear(dim, adapt_dim, bias=False)
        self.conv_weight = nn.Parameter(torch.empty(adapt_dim, kernel_size))
        self.conv_bias = nn.Parameter(torch.zeros(adapt_dim))
        nn.init.normal_(self.conv_weight, std=1.0 / math.sqrt(kernel_size))

    def forward(self, x: Tensor, cache: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x: (b, t, dim); cache: (b, K-1, adapt_dim) previous inputs or None.

        Returns ``c`` of shape (b, t, adapt_dim) and the new cache.
        """
        return causal_conv_silu(self.proj(x), self.conv_weight, self.conv_bias, cache)


class AdaptiveLinear(nn.Module):
    """A linear layer whose weight depends on the causal context ``c_t``.

    ``y_t = W x_t + b + U (g(c_t) ⊙ (V x_t))``,   ``g(c) = G c + g_0``

    with ``W: out×in`` the ordinary weight, ``V: rank×in`` and ``U: out×rank`` a
    low-rank input-conditioned correction whose ``rank`` singular directions are
    rescaled per position by ``g(c_t)`` (``G: rank×adapt_dim``). The effective
    weight ``W + U diag(g(c_t)) V`` is never materialised (for many positions ``[W U]`` maps
    ``[x; g ⊙ V x]`` in one matmul; for a few, ``[W; V] x`` then ``U (·)``), so the cost is one linear layer plus
    ``rank·(in+out) + rank·adapt_dim`` extra multiply-adds per position — at
    ``in=out=adapt_dim=512, rank=32`` that is ≈1.19× an ``nn.Linear`` in both
    parameters and FLOPs. ``U`` starts at zero, so at init the layer *is* the
    plain linear layer and the adaptive part grows only as training finds it useful.
    ``rank=0`` is exactly ``nn.Linear`` (``c`` is ignored): the ablation without adaptation.
    """

    def __init__(
        self, in_features: int, out_features: int, adapt_dim: int, rank: int = 16, bias: bool = True
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        # [W; V] live in one parameter: the checkpoint layout since the two were fused (see _load_from_state_dict).
        self.weight_down = nn.Parameter(torch.empty(out_features + rank, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.up = nn.Parameter(torch.zeros(out_features, rank))  # U
        self.gate = nn.Linear(adapt_dim, rank) if rank else None  # g(c)
        nn.init.normal_(self.weight_down, std=0.02)
        if self.gate is not None:
            nn.init.normal_(self.gate.weight, std=0.02)
            nn.init.ones_(self.gate.bias)

    @property
    def weight(self) -> Tensor:
        """W: (out_features, in_features), a view into the fused parameter."""
        return self.weight_down[: self.out_features]

    @property
    def down(self) -> Tensor:
        """V: (rank, in_features), a view into the fused parameter."""
        return self.weight_down[self.out_features :]

    def forward(self, x: Tensor, c: Tensor | None) -> Tensor:
        """x: (..., in_features), c: (..., adapt_dim) -> (..., out_features)."""
        if self.gate is None:
            return F.linear(x, self.weight_down, self.bias)
        if x.numel() // self.in_features < self.out_features:
            # few positions (decoding a byte, short prompts): W x and V x in one matmul, then U (g ⊙ V x); copying
            # [W U] as below would cost more than it saves (up to 1.6x slower at batch 1; cpu_speed/adaptive_rows.md)
            y, low = F.linear(x, self.weight_down).split([self.out_features, self.rank], dim=-1)
            y = y + F.linear(low * self.gate(c), self.up)
            return y if self.bias is None else y + self.bias
        # many positions (training, prefill): W x + U (g ⊙ V x) as [W U] [x; g ⊙ V x], one matmul over in + rank
        # inputs rather than a second one over only `rank` inputs, which CPU GEMMs run at a fraction of their speed
        # (this layer 1.3-1.5x faster fwd+bwd; experiments/cpu_speed)
        low = F.linear(x, self.down) * self.gate(c)
        return F.linear(torch.cat([x, low.to(x.dtype)], dim=-1), torch.cat([self.weight, self.up], dim=1), self.bias)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object, **kwargs: object) -> None:
        # checkpoints written before W and V were fused hold them as two tensors
        w, v = state_dict.pop(prefix + "weight", None), state_dict.pop(prefix + "down", None)
        if w is not None and v is not None:
            state_dict[prefix + "weight_down"] = torch.cat([w, v])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}"
