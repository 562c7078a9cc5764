"""LFByteTransformer: a byte-level language model of adaptive token- and channel-mixing blocks.

Block (pre-norm residual)::

    c   = CausalConditioner(norm1(x))             # causal context, bytes <= t
    x   = x + TokenMixing(norm1(x), c)            # mixes positions (causal)
    x   = x + ChannelMixing|MoE(norm2(x))         # mixes features (per position)

Every part is causal, so the model can be decoded one byte at a time from a small
per-layer state (conditioner window + token-mixing state), giving exactly the
logits of the full forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from .adaptive import CausalConditioner
from .byte_lm import VOCAB_SIZE, ModelOutput, count_parameters, merge_config, next_byte_loss
from .channel_mixing import ChannelMixing
from .dropout import Dropout
from .moe import MixtureOfExperts, RouterStats
from .positional import PositionalEncoding
from .token_mixing import MixState, TokenMixing


@dataclass
class LFByteConfig:
    seq_len: int = 256
    embed_dim: int = 256
    num_layers: int = 4
    num_heads: int = 4
    adapt_dim: int = 64
    adapt_rank: int = 16  # 0: plain linear layers and no conditioner (the ablation without adaptation)
    conv_size: int = 4  # conditioner window; 1: c_t sees byte t only (the ablation without a causal summary)
    num_experts: int = 4
    top_k: int = 2
    mlp_ratio: float = 8 / 3  # dense hidden = mlp_ratio·dim; each expert gets hidden/top_k
    moe_balance_weight: float = 0.01
    moe_z_weight: float = 0.001
    chunk_size: int = 64
    data_decay: bool = True  # False: one fixed decay per head (the ablation without data-dependent decay)
    channel_decay: bool = False  # a decay rate per key channel, spread within each head (TokenMixing)
    # TokenMixing's state update: the gated delta rule instead of decay-and-add, in every layer (True) or in the
    # listed ones (0-based layer indices: a hybrid)
    delta_rule: bool | tuple[int, ...] = False
    short_conv: int = 0  # window of TokenMixing's causal conv + SiLU on k, v; 0: none (checkpoints before it)
    mixer_kernel: str = "auto"  # what computes token mixing (model/kernels.py): auto | torch | fla; same maths
    dropout: float = 0.0
    pos_encoding: str = "sinusoidal"
    tie_embeddings: bool = True
    vocab_size: int = VOCAB_SIZE

    @property
    def hidden(self) -> int:
        return int(64 * math.ceil(self.mlp_ratio * self.embed_dim / 64))


@dataclass
class DecodeState:
    """Per-layer caches for incremental decoding, plus how many bytes were consumed."""

    conv: list[Tensor | None]
    mix: list[MixState | None]
    pos: int | Tensor = 0  # a 0-d tensor in a compiled decoding step (no recompilation per position)


# why a delta_rule is refused (neither true/false nor a list of layers), for LFByteTransformer and the config check
DELTA_LAYERS = ("{p}delta_rule={value!r} must be true, false or a list of 0-based layer indices in increasing "
                "order below num_layers={n} (e.g. {p}delta_rule=[3]: the delta rule in the last of four layers only)")


def valid_delta_rule(value: object, num_layers: int) -> bool:
    """``delta_rule`` is true, false or a list of layer indices in ``[0, num_layers)``, increasing (one spelling per
    model: a resumed run's config is compared as written)."""
    if isinstance(value, bool):
        return True
    if not isinstance(value, (list, tuple)):
        return False
    ok = all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < num_layers for i in value)
    return ok and list(value) == sorted(set(value))


def delta_layer(cfg: LFByteConfig, index: int) -> bool:
    """Whether block ``index`` mixes by the delta rule (``delta_rule``: true for all, or a list of layers)."""
    return cfg.delta_rule if isinstance(cfg.delta_rule, bool) else index in cfg.delta_rule


class LFBlock(nn.Module):
    def __init__(self, cfg: LFByteConfig, index: int = 0) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.norm1 = nn.LayerNorm(d, bias=False)
        self.norm2 = nn.LayerNorm(d, bias=False)
        # without an adaptive part nothing reads c_t, so it is not computed
        self.conditioner = CausalConditioner(d, cfg.adapt_dim, cfg.conv_size) if cfg.adapt_rank else None
        self.mixer = TokenMixing(
            d, cfg.num_heads, cfg.adapt_dim, cfg.adapt_rank, cfg.seq_len, cfg.chunk_size, cfg.data_decay,
            cfg.mixer_kernel, cfg.short_conv, cfg.channel_decay, delta_layer(cfg, index),
        )
        if cfg.num_experts > 1:
            hidden = max(64, cfg.hidden // cfg.top_k)
            self.ffn: nn.Module = MixtureOfExperts(
                d, hidden, cfg.num_experts, cfg.top_k, cfg.moe_balance_weight, cfg.moe_z_weight
            )
        else:
            self.ffn = ChannelMixing(d, cfg.hidden)
        self.drop = Dropout(cfg.dropout)

    def forward(
        self, x: Tensor, conv: Tensor | None, mix: MixState | None, losses: bool = True
    ) -> tuple[Tensor, Tensor | None, RouterStats | None, Tensor, MixState]:
        h = self.norm1(x)
        c, conv = self.conditioner(h, conv) if self.conditioner is not None else (None, None)
        mixed, mix = self.mixer(h, c, mix)
        x = x + self.drop(mixed)
        h = self.norm2(x)
        if isinstance(self.ffn, MixtureOfExperts):
            y, aux, stats = self.ffn(h, losses)
        else:
            y, aux, stats = self.ffn(h), None, None
        return x + self.drop(y), aux, stats, conv, mix


class LFByteTransformer(nn.Module):
    """Byte-level LM: ``LFByteTransformer(embed_dim=256, num_layers=4, ...)`` or ``(LFByteConfig(...))``."""

    fixed_size_state = True  # the decode state does not grow with the context: a decoding step can be compiled

    def __init__(self, config: LFByteConfig | None = None, **overrides: object) -> None:
        super().__init__()
        self.config = cfg = merge_config(LFByteConfig, config, overrides, "LFByteTransformer")
        if not isinstance(cfg.delta_rule, bool):  # a list of layers (a ListConfig from Hydra): kept as a tuple
            value = cfg.delta_rule
            if isinstance(value, Sequence) and not isinstance(value, str):
                value = list(value)
            if not valid_delta_rule(value, cfg.num_layers):
                raise ValueError(DELTA_LAYERS.format(p="", value=value, n=cfg.num_layers))
            cfg.delta_rule = tuple(value)
        d = cfg.embed_dim
        self.embed = nn.Embedding(cfg.vocab_size, d)
        self.pos = PositionalEncoding(d, cfg.seq_len, cfg.pos_encoding)
        self.drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(LFBlock(cfg, i) for i in range(cfg.num_layers))
        self.norm = nn.LayerNorm(d, bias=False)
        self.head = nn.Linear(d, cfg.vocab_size, bias=False)
        self._init_weights()
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight

    def _init_weights(self) -> None:
        """std 0.02 everywhere; projections into the residual stream scaled by 1/sqrt(2L) (GPT-2)."""
        residual_std = 0.02 / math.sqrt(2 * self.config.num_layers)
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)) and not name.endswith(".gate"):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        for block in self.blocks:
            nn.init.normal_(block.mixer.out_proj.weight, std=residual_std)
            ffn = block.ffn
            nn.init.normal_(ffn.w_out if isinstance(ffn, MixtureOfExperts) else ffn.w_out.weight, std=residual_std)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """All parameters; ``exclude_embeddings``: without the lookup tables (the token embedding unless it is
        tied to the output head, and a learned positional table), which cost no matmul FLOPs."""
        return count_parameters(self, exclude_embeddings, self.config.tie_embeddings)

    def init_state(self) -> DecodeState:
        n = self.config.num_layers
        return DecodeState(conv=[None] * n, mix=[None] * n, pos=0)

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        state: DecodeState | None = None,
        use_cache: bool = False,
    ) -> ModelOutput:
        """idx: (b, t) token ids in [0, vocab_size). With ``state`` (or ``use_cache``) the
        bytes continue that state and the new state is returned in ``.state``; the MoE's auxiliary losses and
        router stats are not computed then (``aux_loss`` None, ``router_stats`` empty)."""
        offset = state.pos if state is not None else 0
        if state is None and use_cache:
            state = self.init_state()
        decoding = state is not None  # nothing reads the MoE's auxiliary losses and stats then
        x = self.drop(self.pos(self.embed(idx), offset))
        aux_total: Tensor | None = None
        stats: list[RouterStats] = []
        new_conv, new_mix = [], []
        for i, block in enumerate(self.blocks):
            conv = state.conv[i] if state is not None else None
            mix = state.mix[i] if state is not None else None
            x, aux, st, conv, mix = block(x, conv, mix, losses=not decoding)
            new_conv.append(conv)
            new_mix.append(mix)
            if aux is not None:
                aux_total = aux if aux_total is None else aux_total + aux
                stats.append(st)
        logits = self.head(self.norm(x))
        loss = None
        if targets is not None:
            loss = next_byte_loss(logits, targets)
        new_state = None
        if state is not None:
            new_state = DecodeState(new_conv, new_mix, offset + idx.shape[1])
        return ModelOutput(logits, loss, aux_total, stats, new_state)

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Forward matmul FLOPs per position, counted from the layers as built.

        Training costs ≈ 3× this (forward + backward). Masked work inside a chunk is
        counted in full because it is computed in full.
        """
        cfg = self.config
        d, a, r, H, C = cfg.embed_dim, cfg.adapt_dim, cfg.adapt_rank, cfg.num_heads, cfg.chunk_size
        dh = d // H
        T = seq_len or cfg.seq_len
        total = 2 * d * cfg.vocab_size
        for block in self.blocks:
            delta = block.mixer.delta_rule
            proj_out = 4 * d + (H if cfg.data_decay else 0) + (H if delta else 0)
            per_layer = (2 * d * a + 2 * a * cfg.conv_size) if r else 0  # conditioner
            per_layer += 2 * d * (proj_out + r) + 2 * a * r + 2 * r * proj_out  # adaptive in_proj
            per_layer += 2 * 2 * d * block.mixer.short_conv  # short convolution over k, v
            if delta:  # delta_mix per chunk of c (padded) and head: k·k and q·k (c² each), (I + A)^-1 times [V | K]
                # and scores times it (c² per column of both), K̃ᵀ times it and (q - scores W_k)·S (c·dh per column);
                # M·S for every chunk but the first; the inverse by doubling, c padded to p = 2^m: 2p(p² - 1)/3
                c = min(C, T)
                n = math.ceil(T / c)
                p = 1 << (c - 1).bit_length()
                per_layer += d * (n * (12 * c * c + 6 * c * dh) + 2 * (n - 1) * dh * dh) / T
                per_layer += H * n * 2 * p * (p * p - 1) / 3 / T
            elif T <= C:  # one chunk, unpadded: the masked T×T mixing and the state at its end
                per_layer += 4 * T * d + 2 * d * dh
            else:
                per_layer += 4 * C * d + 4 * d * dh  # intra-chunk mixing + chunk states / inter-chunk read
                per_layer += 2 * math.ceil(T / C) * d * dh // C  # combining chunk states
            per_layer += 2 * d * d  # out_proj
            ffn = block.ffn
            if isinstance(ffn, MixtureOfExperts):
                per_layer += 2 * d * ffn.num_experts + ffn.top_k * 6 * d * ffn.hidden
            else:
                per_layer += 6 * d * ffn.hidden
            total += per_layer
        return float(total)


__all__ = ["DecodeState", "LFByteConfig", "LFByteTransformer"]
