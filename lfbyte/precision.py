"""Mixed precision: pick a dtype that the hardware runs fast, and the autocast context for it."""

from __future__ import annotations

import contextlib
from functools import lru_cache

import torch

from .errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16 units make bf16 matmuls several times faster than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return any(flag in flags for flag in ("amx_bf16", "avx512_bf16"))


def precision_problem(value: object) -> str | None:
    """Why ``trainer.precision`` cannot be ``value``, or None."""
    return None if value in PRECISIONS else f"trainer.precision={value!r} must be one of {list(PRECISIONS)}"


def resolve_precision(requested: str, device: torch.device) -> str:
    """The precision a run uses on ``device``: ``auto`` picks bf16 where the hardware runs it fast."""
    if problem := precision_problem(requested):
        raise ConfigError(problem)
    if requested != "auto":  # fp16 on a CPU is slow but supported by autocast: the user asked for it
        if device.type == "cuda" and requested == "bf16" and not torch.cuda.is_bf16_supported():
            raise ConfigError("trainer.precision=bf16 is not supported on this GPU; use fp16 or fp32")
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def slow_precision_warning(precision: str, device: torch.device) -> str | None:
    """One warning line where a run asked for bf16 on a CPU without bf16 units (autocast then emulates it), else None."""
    if device.type == "cpu" and precision == "bf16" and not cpu_has_fast_bf16():
        return ("warning: trainer.precision=bf16 on a CPU without bf16 units (no amx_bf16 or avx512_bf16 flag): "
                "autocast emulates it, 9x slower than fp32 in the 2-minute recipe's step on an AVX2-only EPYC "
                "(experiments/compare/zen3_host/step_times.log); trainer.precision=auto picks fp32 here")
    return None


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])
