"""Which device a process runs on: the one place ``auto``/``cpu``/``cuda``/``cuda:N`` is interpreted."""

from __future__ import annotations

import torch

from .errors import ConfigError


def resolve_device(requested: str | torch.device | None, key: str = "trainer.device", local_rank: int = 0) -> torch.device:
    """``auto`` (or None): cuda when a GPU is visible, else cpu. ``cuda``: this process's GPU
    (``local_rank`` modulo the visible count, so DDP workers spread over the GPUs). ``cuda:N``, ``cpu``.

    A device that is not one, or a GPU that is not visible, is a :class:`ConfigError` naming ``key``."""
    if requested is None or str(requested) == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError, ValueError, OverflowError):
        raise ConfigError(f"{key}={requested!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}={requested} but no GPU is visible; use {key}=cpu")
        count = torch.cuda.device_count()
        if device.index is None:
            return torch.device("cuda", local_rank % count)
        if device.index >= count:
            raise ConfigError(f"{key}={requested} but only {count} GPU(s) are visible; use cuda:0..cuda:{count - 1}")
    return device
