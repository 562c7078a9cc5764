"""lfbyte: byte-level language models (LFByteTransformer) and a Hydra experiment framework."""

from .model import GPT, LFByteConfig, LFByteTransformer

__all__ = ["GPT", "LFByteConfig", "LFByteTransformer", "generate_text", "load_run"]
__version__ = "0.1.0"


def __getattr__(name: str):  # generation pulls no training code; import it on first use
    if name in ("generate_text", "load_run"):
        from . import generate

        return getattr(generate, name)
    raise AttributeError(name)
