"""lfbyte: byte-level language models (LFByteTransformer) and a Hydra experiment framework."""

from .model import GPT, LFByteConfig, LFByteTransformer

__all__ = ["GPT", "LFByteConfig", "LFByteTransformer", "generate_text", "load_run"]
__version__ = "0.1.0"


def __getattr__(name: str):  # generation pulls no training code; import it on first use
    if name == "generate_text":
        from .generate import generate_text

        return generate_text
    if name == "load_run":
        from .runs import load_run

        return load_run
    raise AttributeError(name)
