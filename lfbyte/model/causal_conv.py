"""Short depthwise causal convolution followed by SiLU: ``y_t = SiLU(b + sum_{i<K} w_i ⊙ u_{t-K+1+i})``.

One owner for the two places the model looks a few bytes back per channel: the conditioner's summary ``c_t``
(:class:`~lfbyte.model.adaptive.CausalConditioner`) and TokenMixing's short convolution over keys and values.
Bytes before the first one are zeros, or the cache of the last ``K-1`` inputs when continuing a sequence.

Training runs it as shifted multiply-adds with a hand-written backward: at these widths (16-192 channels,
64 positions) a CPU ``conv1d`` or autograd through padded slices spends most of its time allocating and
copying (``experiments/cpu_speed/short_conv.md``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _conv(u: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """The pre-activation ``b + sum_s w_{K-1-s} ⊙ u_{t-s}`` for zeros before ``u``: u (b, t, C), weight (C, K)."""
    k = weight.shape[1]
    pre = torch.addcmul(bias, u, weight[:, k - 1])
    for s in range(1, min(k, u.shape[1])):  # taps reaching before the first byte only see zeros
        pre[:, s:].addcmul_(u[:, :-s], weight[:, k - 1 - s])
    return pre


class _CausalConvSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, u: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        pre = _conv(u, weight, bias)
        ctx.save_for_backward(u, weight, pre)
        return F.silu(pre)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        u, weight, pre = ctx.saved_tensors
        g = torch.ops.aten.silu_backward(grad, pre)  # one fused op for grad · dSiLU(p)/dp
        k, t = weight.shape[1], u.shape[1]
        grad_u = g * weight[:, k - 1]
        grad_w = torch.zeros_like(weight) if k > t else torch.empty_like(weight)  # taps past the start: zero
        grad_w[:, k - 1] = (g * u).sum((0, 1))
        for s in range(1, min(k, t)):
            grad_u[:, :-s].addcmul_(g[:, s:], weight[:, k - 1 - s])
            grad_w[:, k - 1 - s] = (g[:, s:] * u[:, :-s]).sum((0, 1))
        return grad_u, grad_w, g.sum((0, 1))


def causal_conv_silu(u: Tensor, weight: Tensor, bias: Tensor, cache: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """u: (b, t, C); weight: (C, K); bias: (C,); cache: (b, K-1, C) inputs before ``u``, or None for zeros.

    Returns SiLU of the convolution, (b, t, C), and the new cache: the last ``K-1`` inputs (zero-padded on the
    left when fewer were seen)."""
    k = weight.shape[1]
    weight, bias = weight.to(u.dtype), bias.to(u.dtype)
    if cache is None:
        y = _CausalConvSiLU.apply(u, weight, bias)
        window = u
    else:  # continuing (prefill after a prompt, decoding a byte): the cached inputs stand in for the zeros
        window = torch.cat([cache.to(u.dtype), u], dim=1)
        y = F.silu(_conv(window, weight, bias)[:, k - 1 :])
    if window.shape[1] < k - 1:
        window = F.pad(window, (0, 0, k - 1 - window.shape[1], 0))
    # a fresh copy of K-1 rows with standard strides: a view (even one `.contiguous()` accepts at batch 1) keeps
    # the whole input alive and carries the prompt length in its strides, which a compiled decoding step guards on
    return y, window[:, window.shape[1] - (k - 1) :].clone(memory_format=torch.contiguous_format)


__all__ = ["causal_conv_silu"]
