"""Which implementation computes TokenMixing's decaying linear attention.

``decay_mix`` (pure torch, :mod:`.token_mixing`) is the reference and runs everywhere. On CUDA, when
``fla-core`` (flash-linear-attention's ops, ``pip install -e ".[gpu]"``) is importable, the same
recurrence ``S_t = exp(g_t) S_{t-1} + k_t v_tᵀ, o_t = q_t S_t`` runs as fla's fused Triton kernels:
``chunk_simple_gla`` for a sequence, ``fused_recurrent_simple_gla`` for one new byte (decoding).
fla is imported lazily here and only here, so :mod:`lfbyte.model` stays pure torch + einops at import
time and nothing fails when fla or triton is missing.

``mixer_kernel``: ``auto`` (fla when it can run, else torch), ``torch`` (always the reference) or
``fla`` (fla or an error naming what to install). The choice does not change the maths, only speed
and rounding.
"""

from __future__ import annotations

import functools
import logging
import re
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

MIXER_KERNELS = ("auto", "torch", "fla")
FLA_MIN_VERSION = (0, 6)  # the (B, T, H, D) layout and keyword arguments below were checked against 0.6.0
INSTALL_HINT = 'pip install -e ".[gpu]" (fla-core>=0.6) on a machine with a CUDA GPU'
# fla's Triton kernels compute in fp32/bf16/fp16; anything else (e.g. float64 for gradcheck) stays on torch.
FLA_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

MixFn = Callable[..., tuple[Tensor, Tensor]]
logger = logging.getLogger(__name__)
_CHOSEN: dict[tuple[str, str, torch.dtype], str] = {}
_LOGGED: set[str] = set()
_FLA_OPS: tuple[MixFn, MixFn, str] | None = None  # fla's ops once chosen (functools.cache is opaque to dynamo)


@functools.cache
def _fla_ops() -> tuple[MixFn, MixFn, str] | str:
    """fla's (chunk, fused recurrent) simple-GLA ops and fla's version, or why they cannot be used."""
    try:
        with warnings.catch_warnings():  # fla warns at import on a machine where Triton has no GPU backend
            warnings.simplefilter("ignore")
            import fla
            from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla
    except Exception as e:  # not only ImportError: a broken triton install can raise anything at import
        missing = isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] == "fla"
        return "fla-core is not installed" if missing else f"fla-core cannot be imported ({type(e).__name__}: {e})"
    version = str(getattr(fla, "__version__", "0"))
    if tuple(int(n) for n in re.findall(r"\d+", version)[:2]) < FLA_MIN_VERSION:
        return f"fla-core {version} is older than {'.'.join(map(str, FLA_MIN_VERSION))}"
    return chunk_simple_gla, fused_recurrent_simple_gla, version


def fla_unavailable(device_type: str) -> str | None:
    """Why the fused kernels cannot run on ``device_type`` (``cuda``, ``cpu``, ...); None when they can."""
    if device_type != "cuda":
        return f"{device_type} device; the fused kernels need CUDA"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    ops = _fla_ops()
    return ops if isinstance(ops, str) else None


def fla_problem(device_type: str) -> str | None:
    """The one line refusing ``model.mixer_kernel=fla`` on ``device_type``, or None when fla can run there."""
    reason = fla_unavailable(device_type)
    if reason is None:
        return None
    return (f"model.mixer_kernel=fla needs fla-core on CUDA: {INSTALL_HINT}, or use model.mixer_kernel=auto "
            f"(here: {reason})")


def to_fla(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, state: Tensor | None) -> dict[str, Any]:
    """decay_mix's arguments as fla simple-GLA keyword arguments.

    fla takes (B, T, H, D) and gates g (B, T, H) as natural-log decays (``S_t = exp(g_t) S_{t-1} + k_t v_tᵀ``);
    decay_mix takes (b, h, t, d) and log_decay (b, h, t). fla multiplies q by ``scale`` (1/sqrt(K) when None)
    while TokenMixing already scaled the keys, hence scale=1.0. The state layout is the same, (N, H, K, V) fp32.
    """
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    return dict(q=q, k=k, v=v, g=log_decay.float().transpose(1, 2), scale=1.0, initial_state=state,
                output_final_state=True)


def from_fla(out: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
    """fla's (o (B, T, H, V), final state (N, H, K, V)) as decay_mix returns them."""
    return out.transpose(1, 2), state


def fla_decay_mix(
    q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, chunk_size: int, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """:func:`~lfbyte.model.token_mixing.decay_mix` on fla's fused kernels (same arguments and results).

    ``chunk_size`` is not passed on: fla picks its own chunk (64), which changes rounding, not the result."""
    ops = _FLA_OPS or _fla_ops()  # the global (set when fla was chosen) is what a compiled graph can read
    if isinstance(ops, str):
        raise RuntimeError(ops)
    chunk, recurrent = ops[0], ops[1]
    op = recurrent if q.shape[2] == 1 else chunk  # one byte: the recurrence, no chunk padding
    return from_fla(*op(**to_fla(q, k, v, log_decay, state)))


def _log_once(message: str) -> None:
    if message not in _LOGGED:
        _LOGGED.add(message)
        logger.info(message)


def _choose(choice: str, device_type: str, dtype: torch.dtype) -> str:
    if choice not in MIXER_KERNELS:
        raise ValueError(f"mixer_kernel={choice!r} is not one of {MIXER_KERNELS}")
    if device_type == "meta":  # shape tracing (the memory estimate), not a run: nothing to choose or log
        return "torch"
    reason = "model.mixer_kernel=torch" if choice == "torch" else fla_unavailable(device_type)
    if reason is None and dtype not in FLA_DTYPES:
        reason = f"{dtype} inputs; the fused kernels take {', '.join(str(d) for d in FLA_DTYPES)}"
    if choice == "fla" and reason is not None:
        raise RuntimeError(fla_problem(device_type)
                           or f"model.mixer_kernel=fla cannot run here ({reason}); use model.mixer_kernel=auto")
    if reason is None:
        global _FLA_OPS
        _FLA_OPS = _fla_ops()
        _log_once(f"token mixing: fused fla kernels (fla-core {_FLA_OPS[2]}) on {device_type}")
        name = "fla"
    else:
        _log_once(f"token mixing: pure-torch decay_mix ({reason})")
        name = "torch"
    _CHOSEN[(choice, device_type, dtype)] = name
    return name


def kernel_name(choice: str, device_type: str, dtype: torch.dtype) -> str:
    """``"fla"`` or ``"torch"``: which decay_mix runs for ``mixer_kernel=choice`` on inputs on ``device_type`` of
    ``dtype``. Decided (and logged) once per process for each (choice, device type, dtype); ``fla`` where it
    cannot run raises RuntimeError with one line naming what to install."""
    name = _CHOSEN.get((choice, device_type, dtype))
    return name if name is not None else _choose(choice, device_type, dtype)


# Run on the host even while torch.compile traces: the import probe and the log line stay out of the graph, which
# sees the answer as a constant. This is what torch._dynamo.assume_constant_result does (it sets this attribute);
# set directly because importing torch._dynamo would add ~1.7 s to every command. tests/test_sync_free.py's
# fullgraph test fails if the attribute stops working.
kernel_name._dynamo_marked_constant = True  # type: ignore[attr-defined]


__all__ = ["FLA_DTYPES", "MIXER_KERNELS", "fla_decay_mix", "fla_problem", "fla_unavailable", "from_fla", "kernel_name",
           "to_fla"]
