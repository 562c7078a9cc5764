"""Baseline: a plain pre-norm causal self-attention transformer (GPT-2 style) over bytes.

Same byte vocabulary, output type and decoding interface as LFByteTransformer, so the
trainer, generation and benchmarks treat both alike and every claim about
LFByteTransformer can be measured against it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .byte_lm import VOCAB_SIZE, ModelOutput, count_parameters, merge_config, next_byte_loss
from .dropout import Dropout
from .positional import PositionalEncoding


@dataclass
class GPTConfig:
    seq_len: int = 256
    embed_dim: int = 256
    num_layers: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    # on the attention weights; None: `dropout` (nanoGPT's placement). 0: residual dropout only, as
    # LFByteTransformer places it, and the CPU keeps SDPA's fused kernel (with dropout it takes a slower path)
    attn_dropout: float | None = None
    pos_encoding: str = "learned"
    tie_embeddings: bool = True
    vocab_size: int = VOCAB_SIZE


@dataclass
class KVCache:
    keys: list[Tensor | None]
    values: list[Tensor | None]
    pos: int = 0


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.dropout = cfg.dropout if cfg.attn_dropout is None else cfg.attn_dropout
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim, bias=False)
        self.out_proj = nn.Linear(cfg.embed_dim, cfg.embed_dim, bias=False)

    def forward(self, x: Tensor, k_cache: Tensor | None, v_cache: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = (rearrange(z, "b t (h d) -> b h t d", h=self.num_heads) for z in self.qkv(x).chunk(3, -1))
        if k_cache is not None:
            k, v = torch.cat([k_cache, k], 2), torch.cat([v_cache, v], 2)
        t_new, t_all = q.shape[2], k.shape[2]
        if k_cache is None or t_new == 1:
            # fresh causal block, or one new query that may see every cached key
            out = F.scaled_dot_product_attention(
                q, k, v, is_causal=k_cache is None and t_new > 1, dropout_p=self.dropout if self.training else 0.0
            )
        else:  # several new queries after a cache: offset causal mask
            mask = torch.ones(t_new, t_all, dtype=torch.bool, device=x.device).tril(t_all - t_new)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(rearrange(out, "b h t d -> b t (h d)")), k, v


class GPTBlock(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(cfg)
        hidden = int(cfg.mlp_ratio * d)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d))
        self.drop = Dropout(cfg.dropout)

    def forward(self, x: Tensor, k: Tensor | None, v: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        a, k, v = self.attn(self.norm1(x), k, v)
        x = x + self.drop(a)
        return x + self.drop(self.mlp(self.norm2(x))), k, v


class GPT(nn.Module):
    """``GPT(embed_dim=256, num_layers=4, num_heads=4, seq_len=256)``."""

    def __init__(self, config: GPTConfig | None = None, **overrides: object) -> None:
        super().__init__()
        self.config = cfg = merge_config(GPTConfig, config, overrides, "GPT")
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.pos = PositionalEncoding(cfg.embed_dim, cfg.seq_len, cfg.pos_encoding)
        self.drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(GPTBlock(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.embed_dim)
        self.head = nn.Linear(cfg.embed_dim, cfg.vocab_size, bias=False)
        residual_std = 0.02 / math.sqrt(2 * cfg.num_layers)
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                std = residual_std if name.endswith(("out_proj", "mlp.2")) else 0.02
                nn.init.normal_(module.weight, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """As :meth:`LFByteTransformer.num_parameters`: ``exclude_embeddings`` leaves out the lookup tables."""
        return count_parameters(self, exclude_embeddings, self.config.tie_embeddings)

    def init_state(self) -> KVCache:
        n = self.config.num_layers
        return KVCache([None] * n, [None] * n, 0)

    def forward(
        self, idx: Tensor, targets: Tensor | None = None, state: KVCache | None = None, use_cache: bool = False
    ) -> ModelOutput:
        offset = state.pos if state is not None else 0
        if state is None and use_cache:
            state = self.init_state()
        x = self.drop(self.pos(self.embed(idx), offset))
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            k = state.keys[i] if state is not None else None
            v = state.values[i] if state is not None else None
            x, k, v = block(x, k, v)
            keys.append(k)
            values.append(v)
        logits = self.head(self.norm(x))
        loss = None
        if targets is not None:
            loss = next_byte_loss(logits, targets)
        new_state = KVCache(keys, values, offset + idx.shape[1]) if state is not None else None
        return ModelOutput(logits, loss, None, [], new_state)

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Forward matmul FLOPs per position: 2·(matmul params) + causal attention.

        Attention is counted as a causal kernel computes it: query ``t`` meets ``t + 1`` keys, so a
        window of ``T`` averages ``(T + 1) / 2`` keys per position, each costing ``2·d`` for ``q·k``
        and ``2·d`` for the weighted sum of values (flash kernels skip the masked half).
        """
        cfg = self.config
        d, t = cfg.embed_dim, seq_len or cfg.seq_len
        hidden = int(cfg.mlp_ratio * d)
        per_layer = 2 * (3 * d * d + d * d + 2 * d * hidden) + 2 * d * (t + 1)
        return float(cfg.num_layers * per_layer + 2 * d * cfg.vocab_size)
