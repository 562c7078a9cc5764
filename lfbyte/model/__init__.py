"""Models: pure torch + einops, no training or I/O dependencies."""

from .adaptive import AdaptiveLinear, CausalConditioner
from .byte_lm import BYTE_VOCAB, SEPARATOR, VOCAB_SIZE, ModelOutput
from .channel_mixing import ChannelMixing
from .gpt import GPT, GPTConfig
from .lfbyte import DecodeState, LFByteConfig, LFByteTransformer
from .moe import MixtureOfExperts, RouterStats
from .positional import PositionalEncoding
from .token_mixing import TokenMixing, channel_decay_mix, decay_mix, delta_mix

__all__ = [
    "BYTE_VOCAB",
    "GPT",
    "SEPARATOR",
    "VOCAB_SIZE",
    "AdaptiveLinear",
    "CausalConditioner",
    "ChannelMixing",
    "DecodeState",
    "GPTConfig",
    "LFByteConfig",
    "LFByteTransformer",
    "MixtureOfExperts",
    "ModelOutput",
    "PositionalEncoding",
    "RouterStats",
    "TokenMixing",
    "channel_decay_mix",
    "decay_mix",
    "delta_mix",
]

ARCHITECTURES = {"lfbyte": LFByteTransformer, "gpt": GPT}


def build_model(cfg: dict) -> LFByteTransformer | GPT:
    """Build from a ``model=`` config: ``arch`` picks the class, the other keys are its options."""
    cfg = dict(cfg)
    arch = cfg.pop("arch", "lfbyte")
    if arch not in ARCHITECTURES:
        raise ValueError(f"model.arch={arch!r} is not one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**cfg)
