"""Causal token mixing across sequence positions: chunked, data-gated decaying linear attention."""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor, nn

from .adaptive import AdaptiveLinear
from .causal_conv import causal_conv_silu
from .kernels import MIXER_KERNELS, MixFn, fla_decay_mix, kernel_name

MixState = tuple[Tensor, Tensor | None]  # TokenMixing's decoding state: decay_mix's state, short-conv cache


def decay_mix(
    q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, chunk_size: int, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Causal mixing ``o_t = sum_{s<=t} (prod_{s<r<=t} γ_r) (q_t·k_s) v_s`` per head.

    Equivalently the recurrence ``S_t = γ_t S_{t-1} + k_t v_tᵀ``, ``o_t = q_t S_t``.
    Computed chunk-wise so the cost per position is constant in the sequence length:
    inside each chunk of ``C`` positions a masked (lower-triangular) decay matrix
    mixes positions exactly; across chunks each chunk is summarised by a
    ``d×d`` state and the states are combined by one masked decay matrix over
    chunks (no Python loop over time).

    q, k: (b, h, t, dk); v: (b, h, t, dv); log_decay: (b, h, t), ``log γ <= 0``;
    state: (b, h, dk, dv) carried in from earlier positions, or None.
    Returns o: (b, h, t, dv) and the state after the last position.
    """
    b, h, t, dk = q.shape
    if t == 1:  # one new byte (decoding): the recurrence itself is cheapest, in plain ops (no einsum parsing)
        return _one_byte(q, k, v, log_decay[..., None], state)  # log γ as (b, h, 1, 1): every row of S
    if t <= chunk_size:  # one chunk (training at seq_len <= chunk_size): the masked decay matrix alone
        return _one_chunk(q, k, v, log_decay, state)
    pad = (-t) % chunk_size
    if pad:  # zero keys and zero log-decay leave the carried state untouched
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        log_decay = F.pad(log_decay, (0, pad))
    q, k, v = (rearrange(x, "b h (n c) d -> b h n c d", c=chunk_size) for x in (q, k, v))
    cum = rearrange(log_decay.float(), "b h (n c) -> b h n c", c=chunk_size).cumsum(-1)

    # Within chunks: exact masked mixing with decay exp(L_i - L_j) for j <= i.
    scores = einsum(q, k, "b h n i d, b h n j d -> b h n i j") * _decay_matrix(cum)
    out = einsum(scores.to(v.dtype), v, "b h n i j, b h n j e -> b h n i e")

    # Each chunk's contribution to the state at its own end.
    last = cum[..., -1]  # total log-decay across each chunk
    k_to_end = k * (last[..., None] - cum).exp()[..., None].to(k.dtype)
    chunk_states = einsum(k_to_end, v, "b h n c d, b h n c e -> b h n d e").float()

    # State entering chunk n: sum_{m<n} exp(G_{n-1} - G_m) S_m (+ decayed carried state).
    total = last.cumsum(-1)  # G_n
    before = total - last  # G_{n-1}
    n = total.shape[-1]
    earlier = torch.ones(n, n, dtype=torch.bool, device=q.device).tril(-1)
    weights = (before[..., :, None] - total[..., None, :]).masked_fill(~earlier, -math.inf).exp()
    states_in = einsum(weights, chunk_states, "b h n m, b h m d e -> b h n d e")
    if state is not None:
        states_in = states_in + before.exp()[..., None, None] * state[:, :, None].float()
    q_from_start = q * cum.exp()[..., None].to(q.dtype)
    out = out + einsum(q_from_start, states_in.to(q.dtype), "b h n c d, b h n d e -> b h n c e")

    new_state = states_in[:, :, -1] * last[:, :, -1, None, None].exp() + chunk_states[:, :, -1]
    out = rearrange(out, "b h n c e -> b h (n c) e")[:, :, :t]
    return out, new_state


def _one_byte(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
    """One step of ``S = γ S + k vᵀ``, ``o = q S``: q, k (b, h, 1, dk), v (b, h, 1, dv); ``log_decay`` broadcasts
    over the state's (dk, dv) rows: (b, h, 1, 1) for one decay per head, (b, h, dk, 1) for one per key channel."""
    dtype = v.dtype
    q, k, v = q.float(), k.float(), v.float()  # no copies when already fp32
    new_state = k.transpose(-1, -2) * v  # k vᵀ: (b, h, dk, dv)
    if state is not None:
        new_state = new_state + log_decay.float().exp() * state.float()
    # q S as a broadcast product summed over dk: CPU bmm with one row per batch is several times slower
    return (q.transpose(-1, -2) * new_state).sum(-2, keepdim=True).to(dtype), new_state


def _decay_matrix(cum: Tensor) -> Tensor:
    """``exp(L_i - L_j)`` for ``j <= i`` and 0 above the diagonal, from cumulative log-decays ``cum`` (..., c)."""
    c = cum.shape[-1]
    causal = torch.ones(c, c, dtype=torch.bool, device=cum.device).tril()
    return (cum[..., :, None] - cum[..., None, :]).masked_fill(~causal, -math.inf).exp()


def _one_chunk(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
    """decay_mix for ``t <= chunk_size``: no padding and no chunk states to combine (a training step of the
    2-minute recipe 0.92-0.97x as long as with four chunks of 16, ``experiments/cpu_speed/short_conv.md``)."""
    cum = log_decay.float().cumsum(-1)  # L_i
    out = ((q @ k.transpose(-1, -2)) * _decay_matrix(cum)).to(v.dtype) @ v  # exp(L_i - L_j) (q_i·k_j) v_j, j <= i
    last = cum[..., -1:]
    new_state = ((k * (last - cum).exp()[..., None].to(k.dtype)).transpose(-1, -2) @ v).float()
    if state is not None:  # the carried state, decayed to each position
        out = out + (q * cum.exp()[..., None].to(q.dtype)) @ state.to(q.dtype)
        new_state = new_state + last[..., None].exp() * state.float()
    return out, new_state


MIN_LOG_DECAY = -1.0  # per-channel decay: γ >= 1/e per byte (half-life >= 0.69 bytes), which bounds the chunk's
# factorised exponents below (|L_i - L_mid| <= 32 at 64 positions: e^±32 factors, e^64 at most in masked products)
CHANNEL_CHUNK = 64  # the most positions per chunk that bound allows
# why channel_decay refuses fla, for the constructor (prefix "") and the config check (prefix "model.")
CHANNEL_DECAY_NO_FLA = ("{p}channel_decay=true runs on the pure-torch mixer only (fla's simple-GLA kernels take one "
                        "decay per head): use {p}mixer_kernel=auto or torch")


def channel_decay_mix(
    q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, chunk_size: int, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """:func:`decay_mix` with a decay per key channel: ``S_t = diag(γ_t) S_{t-1} + k_t v_tᵀ``, ``o_t = q_t S_t``.

    q, k: (b, h, t, dk); v: (b, h, t, dv); log_decay: (b, h, t, dk), each in ``[MIN_LOG_DECAY, 0]``; state:
    (b, h, dk, dv) or None. Within a chunk the decay between positions i >= j, ``exp(L_i - L_j)`` per channel, is
    split as ``exp(L_i - R) · exp(R - L_j)`` around the chunk's middle ``R`` and folded into q and k, so the
    chunk's mixing stays two matmuls (GLA's factorisation; the bound on log γ keeps both factors finite).
    Across chunks, as in :func:`decay_mix`, with the decay matrix per channel.
    """
    b, h, t, dk = q.shape
    if t == 1:  # one new byte: the recurrence itself
        return _one_byte(q, k, v, log_decay.transpose(-1, -2), state)  # log γ as (b, h, dk, 1): row d of S
    c = min(chunk_size, CHANNEL_CHUNK, t)
    pad = (-t) % c
    if pad:  # zero keys and zero log-decay leave the carried state untouched
        q, k, v, log_decay = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v, log_decay))
    q, k, v = (rearrange(x, "b h (n c) d -> b h n c d", c=c) for x in (q, k, v))
    cum = rearrange(log_decay.float(), "b h (n c) d -> b h n c d", c=c).cumsum(-2)  # L_i per channel

    # Within chunks: (q_i e^{L_i - R}) · (k_j e^{R - L_j}) = q_i · k_j e^{L_i - L_j}, kept for j <= i. One exp over
    # the (b, h, t, dk) decays serves every factor below; the others are per chunk.
    mid = cum[..., c // 2 : c // 2 + 1, :]
    grow = (cum - mid).exp()
    q_in, k_in = q * grow.to(q.dtype), k * grow.reciprocal().to(k.dtype)
    causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    scores = einsum(q_in, k_in, "b h n i d, b h n j d -> b h n i j").masked_fill(~causal, 0)
    out = einsum(scores.to(v.dtype), v, "b h n i j, b h n j e -> b h n i e")

    # Each chunk's state at its own end, and the state entering each chunk.
    last = cum[..., -1, :]  # (b, h, n, dk): each chunk's total log-decay per channel
    k_to_end = k_in * (last[..., None, :] - mid).exp().to(k.dtype)  # k_j e^{L_last - L_j}
    chunk_states = einsum(k_to_end, v, "b h n c d, b h n c e -> b h n d e").float()
    n = last.shape[-2]
    if n == 1 and state is None:  # one chunk from zeros (a context of at most one chunk): nothing flows in
        return out[:, :, 0, :t], chunk_states[:, :, 0]
    total = last.cumsum(-2)  # G_n
    before = total - last  # G_{n-1}
    earlier = torch.ones(n, n, dtype=torch.bool, device=q.device).tril(-1)[..., None]
    weights = (before[..., :, None, :] - total[..., None, :, :]).masked_fill(~earlier, -math.inf).exp()
    states_in = einsum(weights, chunk_states, "b h n m d, b h m d e -> b h n d e")
    if state is not None:
        states_in = states_in + before.exp()[..., None] * state[:, :, None].float()
    # q_i e^{L_i} = (q_i e^{L_i - R}) e^R, folded into the state it reads: one small scale per chunk and channel
    states_in = states_in * mid.transpose(-1, -2).exp()
    out = out + einsum(q_in, states_in.to(q.dtype), "b h n c d, b h n d e -> b h n c e")

    new_state = states_in[:, :, -1] * (last - mid[..., 0, :])[:, :, -1, :, None].exp() + chunk_states[:, :, -1]
    out = rearrange(out, "b h n c e -> b h (n c) e")[:, :, :t]
    return out, new_state


# why delta_rule refuses channel_decay and fla, for the constructor (prefix "") and the config check ("model.")
DELTA_RULE_ALONE = ("{p}delta_rule (in any layer) takes one decay per head and runs on the pure-torch mixer: use "
                    "{p}channel_decay=false and {p}mixer_kernel=auto or torch")


def delta_mix(
    q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, beta: Tensor, chunk_size: int, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The gated delta rule: ``S_t = γ_t (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ``, ``o_t = q_t S_t``.

    Where :func:`decay_mix` only adds ``k_t v_tᵀ`` to a fading state, this first removes what the state already
    stores under ``k_t`` (a step of online regression towards ``S_tᵀ k_t = v_t``, rate ``β_t``), so a new value
    replaces an old one under the same key instead of piling up beside it (DeltaNet; gated: Yang et al., 2024).
    Keys must be unit vectors (then ``I - β k kᵀ`` is a contraction for ``β`` in [0, 1]).

    Chunk-wise: write ``S_i = γ_i S_{i-1} + k_i u_iᵀ`` with ``u_i = β_i (v_i - γ_i S_{i-1}ᵀ k_i)``. Within a chunk
    entered with state ``S``, ``(I + A) U = diag(β) (V - diag(e^L) K S)`` where ``A_ij = β_i e^{L_i - L_j} k_i·k_j``
    for ``j < i`` (``L``: the chunk's cumulative log-decays), one unit-lower-triangular system per chunk that does
    not depend on ``S`` (solved by :func:`_unit_lower_inverse`). A chunk then maps its entering state to ``M S + B``,
    the only step taken chunk after chunk; outputs and ``U`` are computed for all chunks at once from the states
    entering them.

    q, k: (b, h, t, dk); v: (b, h, t, dv); log_decay, beta: (b, h, t); state: (b, h, dk, dv) or None.
    Computed in fp32 at least (the system); returns o (b, h, t, dv) in v's dtype and the state after the last position.
    """
    dtype, work = v.dtype, torch.promote_types(v.dtype, torch.float32)  # fp32, or float64 for gradcheck
    q, k, v, beta, log_decay = (x.to(work) for x in (q, k, v, beta, log_decay))
    state = state.to(work) if state is not None else None
    b, h, t, dk = q.shape
    if t == 1:  # one new byte: the recurrence itself
        k_col = k.transpose(-1, -2)  # (b, h, dk, 1)
        s = log_decay[..., None].exp() * state if state is not None else None
        new = v if s is None else v - (k_col * s).sum(-2, keepdim=True)  # v_t - kᵀ(γ S): what the state misses
        s_new = k_col * (beta[..., None] * new) + (s if s is not None else 0)
        return (q.transpose(-1, -2) * s_new).sum(-2, keepdim=True).to(dtype), s_new
    c = min(chunk_size, t)
    pad = (-t) % c
    if pad:  # zero keys, zero β and zero log-decay leave the state untouched
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        log_decay, beta = F.pad(log_decay, (0, pad)), F.pad(beta, (0, pad))
    q, k, v = (rearrange(x, "b h (n c) d -> b h n c d", c=c) for x in (q, k, v))
    cum = rearrange(log_decay, "b h (n c) -> b h n c", c=c).cumsum(-1)  # L_i
    beta = rearrange(beta, "b h (n c) -> b h n c", c=c)[..., None]
    decay = _decay_matrix(cum)  # e^{L_i - L_j}, j <= i
    strict = torch.ones(c, c, dtype=torch.bool, device=q.device).tril(-1)
    a = (beta * (k @ k.transpose(-1, -2)) * decay).masked_fill(~strict, 0)
    rhs = beta * torch.cat([v, k * cum.exp()[..., None]], -1)
    with _without_autocast(q.device):  # the system in `work` precision
        w = _unit_lower_inverse(a) @ rhs  # [W_v | W_k] = (I + A)^-1 diag(β) [V | e^L K]: then U = W_v - W_k S
    dv = v.shape[-1]
    scores = (q @ k.transpose(-1, -2)) * decay
    k_to_end = (k * (cum[..., -1:] - cum).exp()[..., None]).transpose(-1, -2)
    # A chunk maps the state S entering it to e^{L_c} S + K̃ᵀ U = M S + B, with K̃ the keys decayed to the chunk's end:
    # M = e^{L_c} I - K̃ᵀ W_k and B = K̃ᵀ W_v, computed for all chunks at once; only S = M S + B runs chunk by chunk
    inject, to_end_k = (k_to_end @ w).split([dv, dk], -1)
    trans = cum[..., -1, None, None].exp() * torch.eye(dk, dtype=work, device=q.device) - to_end_k
    s, entering = state, []
    for i in range(cum.shape[2]):
        entering.append(s if s is not None else torch.zeros_like(inject[:, :, 0]))
        s = inject[:, :, i] if s is None else trans[:, :, i] @ s + inject[:, :, i]
    s_in = torch.stack(entering, 2)  # (b, h, n, dk, dv): the state entering each chunk
    scores_v, scores_k = (scores @ w).split([dv, dk], -1)
    out = (q * cum.exp()[..., None] - scores_k) @ s_in + scores_v  # q e^L S + scores (W_v - W_k S)
    return rearrange(out, "b h n c e -> b h (n c) e")[:, :, :t].to(dtype), s


def _without_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off, where the device has it (the meta device, on which the memory estimate runs, has none)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _unit_lower_inverse(a: Tensor) -> Tensor:
    """``(I + A)^-1`` for strictly lower-triangular ``A`` (..., c, c), by doubling.

    The inverse of the unit lower block matrix ``[[I + A11, 0], [A21, I + A22]]`` is ``[[T1, 0], [-T2 A21 T1, T2]]``
    with ``T1``, ``T2`` its diagonal blocks' inverses, so log2(c) rounds of batched matmuls build it from 1×1 blocks
    (``c`` zero-padded to a power of two). Where ``linalg.solve_triangular`` substitutes row after row (with copies
    around it), delta_mix's forward and backward at the 10-minute recipe's shapes on a CPU core ran faster in 15 of
    16 interleaved rounds (experiments/cpu_speed/delta_inverse_bench.py, delta_rule_step.log)."""
    c = a.shape[-1]
    p = 1 << (c - 1).bit_length()
    a = F.pad(a, (0, p - c, 0, p - c))
    lead = a.shape[:-2]
    t, s = torch.ones(*lead, p, 1, 1, dtype=a.dtype, device=a.device), 1
    while s < p:
        n = p // (2 * s)
        # A's n diagonal blocks of size 2s by a strided slice (inductor warns on every compile of .diagonal())
        blocks = a.reshape(*lead, n, 2 * s, n, 2 * s).transpose(-3, -2).reshape(*lead, n * n, 2 * s, 2 * s)
        t1, t2 = t.reshape(*lead, n, 2, s, s).unbind(-3)
        t21 = -(t2 @ blocks[..., :: n + 1, s:, :s] @ t1)
        t = torch.cat([torch.cat([t1, torch.zeros_like(t1)], -1), torch.cat([t21, t2], -1)], -2)
        s *= 2
    return t.reshape(*lead, p, p)[..., :c, :c]


def mix_fn(choice: str, device: torch.device, dtype: torch.dtype) -> MixFn:
    """The decay_mix implementation for ``mixer_kernel=choice`` on ``device`` and ``dtype``
    (:func:`~lfbyte.model.kernels.kernel_name` decides: fla's fused kernels or the pure-torch reference)."""
    return fla_decay_mix if kernel_name(choice, device.type, dtype) == "fla" else decay_mix


class TokenMixing(nn.Module):
    """Multi-head causal token mixer gated by AdaptiveLinear projections.

    One AdaptiveLinear produces per-head queries, keys, values, an output gate and a
    data-dependent decay ``γ_t = exp(-softplus(a_t + β_h))`` whose per-head bias
    ``β_h`` spreads the initial half-lives from 1 to ~``seq_len`` bytes (short
    heads see characters, long heads see sentences; one head starts at ~``sqrt(seq_len)``); ``data_decay=False`` keeps only
    ``β_h`` (a fixed decay per head, the ablation). Each head mixes positions with
    :func:`decay_mix`; its output is RMS-normalised, gated by ``SiLU(gate)`` and
    projected back to the residual stream. ``mixer_kernel`` picks what computes the mixing
    (:mod:`.kernels`: ``auto`` runs flash-linear-attention's fused kernels on CUDA when installed);
    it changes speed, not the maths.

    ``short_conv=K`` (> 1) passes keys and values through a depthwise causal convolution of the last ``K`` bytes
    and SiLU before mixing (as GLA/Mamba-style mixers do for q, k, v), so a key and its value describe the few
    bytes ending at a position, not one byte alone; 0 or 1: none. Queries stay per byte: at `tiny`, 2 minutes,
    convolving k, v gave 2.256 val bits/byte (2 seeds), q, k, v 2.270 at 21 % fewer steps, none 2.291
    (``experiments/compare/short_conv``). The decoding state is then the mixing state plus the last ``K-1``
    projected keys and values.

    ``delta_rule=True`` updates the state by the gated delta rule (:func:`delta_mix`) instead: keys are
    L2-normalised and one more per-head input sets the write rate ``β_t = sigmoid(·)``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        adapt_dim: int,
        adapt_rank: int,
        seq_len: int,
        chunk_size: int = 64,
        data_decay: bool = True,
        mixer_kernel: str = "auto",
        short_conv: int = 0,
        channel_decay: bool = False,
        delta_rule: bool = False,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim={dim} must be divisible by num_heads={num_heads}")
        if mixer_kernel not in MIXER_KERNELS:
            raise ValueError(f"mixer_kernel={mixer_kernel!r} is not one of {MIXER_KERNELS}")
        if channel_decay and mixer_kernel == "fla":
            raise ValueError(CHANNEL_DECAY_NO_FLA.format(p=""))
        if delta_rule and (channel_decay or mixer_kernel == "fla"):
            raise ValueError(DELTA_RULE_ALONE.format(p=""))
        self.mixer_kernel = mixer_kernel
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.chunk_size, self.data_decay, self.channel_decay = chunk_size, data_decay, channel_decay
        self.delta_rule = delta_rule
        # q, k, v, gate (+ per-head decay input) (+ per-head β)
        proj_out = 4 * dim + (num_heads if data_decay else 0) + (num_heads if delta_rule else 0)
        self.in_proj = AdaptiveLinear(dim, proj_out, adapt_dim, adapt_rank, bias=False)
        span = math.log2(max(seq_len, 2))  # heads spread from 1 byte to seq_len; one head sits in the middle
        if channel_decay:  # every head spreads its key channels over the whole span instead
            half_lives = torch.logspace(0, span, self.head_dim, base=2.0).expand(num_heads, -1).clone()
        elif num_heads > 1:
            half_lives = torch.logspace(0, span, num_heads, base=2.0)
        else:
            half_lives = torch.tensor([2 ** (span / 2)])
        rate = math.log(2) / half_lives  # -log γ at init
        self.decay_bias = nn.Parameter(torch.log(torch.expm1(rate)))  # softplus⁻¹
        self.head_norm = nn.RMSNorm(self.head_dim, eps=1e-5)
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self.short_conv = short_conv if short_conv > 1 else 0
        if self.short_conv:  # nn.Conv1d's default init: uniform within ±1/sqrt(K)
            bound = self.short_conv**-0.5
            self.conv_weight = nn.Parameter(torch.empty(2 * dim, self.short_conv).uniform_(-bound, bound))
            self.conv_bias = nn.Parameter(torch.zeros(2 * dim))

    def forward(self, x: Tensor, c: Tensor | None, state: MixState | None = None) -> tuple[Tensor, MixState]:
        """x: (b, t, dim), c: (b, t, adapt_dim) or None -> (b, t, dim) and the new state: (mixing state,
        short-convolution cache or None)."""
        mix, window = state if state is not None else (None, None)
        proj = self.in_proj(x, c)
        q, kv, gate = proj[..., : 4 * self.dim].split([self.dim, 2 * self.dim, self.dim], dim=-1)
        if self.short_conv:
            kv, window = causal_conv_silu(kv, self.conv_weight, self.conv_bias, window)
        k, v = kv.split(self.dim, dim=-1)
        q, k, v = (rearrange(z, "b t (h d) -> b h t d", h=self.num_heads) for z in (q, k, v))
        # the delta rule needs unit keys; otherwise the 1/sqrt(d) of attention (the head norm undoes q's scale)
        k = F.normalize(k, dim=-1) if self.delta_rule else k * self.head_dim**-0.5
        bias = self.decay_bias.float()  # (h,), or (h, dk) with channel_decay
        extra = proj[..., 4 * self.dim :].float()
        if self.data_decay:  # one data-dependent input per head (with channel_decay it shifts every channel's rate)
            a = extra[..., : self.num_heads]
            log_decay = -F.softplus((a[..., None] if self.channel_decay else a) + bias)
        else:
            log_decay = (-F.softplus(bias)).expand(*x.shape[:2], *bias.shape)
        log_decay = rearrange(log_decay, "b t h ... -> b h t ...")
        if self.delta_rule:
            beta = rearrange(torch.sigmoid(extra[..., -self.num_heads :]), "b t h -> b h t")
            out, mix = delta_mix(q, k, v, log_decay, beta, self.chunk_size, mix)
        elif self.channel_decay:
            out, mix = channel_decay_mix(q, k, v, log_decay.clamp(min=MIN_LOG_DECAY), self.chunk_size, mix)
        else:
            out, mix = mix_fn(self.mixer_kernel, q.device, q.dtype)(q, k, v, log_decay, self.chunk_size, mix)
        out = self.head_norm(out.to(x.dtype) if out.dtype != x.dtype else out)
        out = rearrange(out, "b h t d -> b t (h d)") * F.silu(gate)
        return self.out_proj(out), (mix, window)
