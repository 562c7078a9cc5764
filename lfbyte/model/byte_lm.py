"""What both byte-level architectures share: the vocabulary, the output and loss, config merging, parameter counts.

The vocabulary is the 256 byte values plus one document separator; a model maps ``(B, T)`` token ids to
``(B, T, VOCAB_SIZE)`` logits and, given targets, the next-byte cross-entropy in nats per byte.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch.nn.functional as F
from torch import Tensor, nn

from .moe import RouterStats

BYTE_VOCAB = 256
SEPARATOR = 256  # document separator token, after the 256 byte values
VOCAB_SIZE = 257


@dataclass
class ModelOutput:
    logits: Tensor
    loss: Tensor | None = None  # next-byte cross-entropy, nats per byte
    aux_loss: Tensor | None = None  # weighted MoE balance + z losses (add to loss when training)
    router_stats: list[RouterStats] = field(default_factory=list)
    state: object | None = None  # decoding state after these bytes, when asked for

    @property
    def training_loss(self) -> Tensor:
        """What training minimises: the next-byte loss plus the auxiliary (MoE) losses."""
        assert self.loss is not None, "the forward pass was given no targets"
        return self.loss if self.aux_loss is None else self.loss + self.aux_loss


def next_byte_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy in nats per byte, in fp32 whatever the autocast dtype; targets of -1 are ignored."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1)


def merge_config(cls: type, config: object | None, overrides: dict, owner: str) -> object:
    """``cls`` (a config dataclass) from ``config`` with keyword ``overrides``; unknown keys are an error."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown {owner} option(s) {unknown}; known: {sorted(known)}")
    return cls(**{**(asdict(config) if config else {}), **overrides})


def count_parameters(model: nn.Module, exclude_embeddings: bool, tied: bool) -> int:
    """Parameters of a byte model with ``embed`` and ``pos`` modules (both architectures have them)."""
    n = sum(p.numel() for p in model.parameters())
    if exclude_embeddings:
        n -= sum(p.numel() for p in model.pos.parameters())
        if not tied:
            n -= model.embed.weight.numel()
    return n
