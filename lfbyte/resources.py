"""Peak training memory, estimated from the config before anything is allocated.

A value that makes one tensor enormous (``trainer.batch_size=10000000``, ``model.embed_dim=1000000``)
would otherwise be found by the kernel's OOM killer: no ``error:`` line, no ``metrics.json``, and
other work on the machine at risk. The estimate runs the model on the ``meta`` device (shapes, no
data): parameters, gradients and AdamW's two moments from the parameter count, activations as the
tensors autograd saves for backward in one micro-batch, plus the largest single intermediate. Layers
are identical (a delta-rule hybrid is measured as if every layer had the costlier delta rule), so one- and
two-layer models are measured and the difference scaled to ``num_layers`` (a deep config costs no more to check
than a shallow one). Mixture-of-experts routing has no data on
``meta``; an even load is assumed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .errors import ConfigError

FP32 = 4
OVERRIDE = "trainer.check_memory=false"


@dataclass(frozen=True)
class MemoryEstimate:
    parameters: float  # count
    weights: float  # bytes per process: parameters + gradients + AdamW moments (fp32 master weights under
    # autocast too); under FSDP a 1/N shard of them, plus one block gathered whole for its forward/backward
    activations: float  # bytes saved for backward in one micro-batch
    largest: float  # bytes of the largest single intermediate tensor
    processes: int  # processes sharing the machine's memory (CPU DDP workers)
    step_windows: float = 0.0  # bytes of one optimizer step's window starts (data.WindowSampler.step_batches)

    @property
    def per_process(self) -> float:
        return self.weights + self.activations + self.largest + self.step_windows

    @property
    def total(self) -> float:
        return self.per_process * self.processes


def gathered_block(block_parameters: float) -> float:
    """Bytes FSDP holds unsharded beyond its shards: one block's fp32 parameters and gradients, gathered
    for its forward and backward."""
    return 2 * FP32 * block_parameters


def human_bytes(n: float) -> str:
    if not math.isfinite(n):
        return "more than can be represented"
    for unit in ("B", "KB", "MB", "GB", "TB", "PB", "EB"):
        if abs(n) < 1000 or unit == "EB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n} EB"  # unreachable


class _Largest(TorchDispatchMode):
    """The size of the largest tensor any op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def _measure(model_cfg: dict[str, Any], layers: int, batch: int) -> tuple[int, int, int]:
    """(parameters, bytes saved for backward, largest intermediate) of one forward on the meta device."""
    from .model import build_model

    if not isinstance(model_cfg.get("delta_rule", False), bool):  # a hybrid's layers: all of the costlier kind
        model_cfg = {**model_cfg, "delta_rule": bool(model_cfg["delta_rule"])}
    with torch.device("meta"):
        model = build_model({**model_cfg, "num_layers": layers})
    params = model.num_parameters()
    if batch == 0:
        return params, 0, 0
    own = {id(p) for p in model.parameters()}
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        if id(t) not in own and not (t._base is not None and id(t._base) in own):  # weights are counted apart
            saved += t.numel() * t.element_size()
        return t

    x = torch.zeros(batch, int(model_cfg["seq_len"]), dtype=torch.long, device="meta")
    largest = _Largest()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), largest:
        model(x, x)
    return params, saved, largest.largest


def estimate_memory(cfg: dict[str, Any]) -> MemoryEstimate:
    """Peak memory of training ``cfg`` (a plain, validated train config), per process and in all."""
    m, t = cfg["model"], cfg["trainer"]
    dist = cfg.get("distributed", {})
    on_cpu = t.get("device") == "cpu" or (t.get("device") == "auto" and not torch.cuda.is_available())
    spawned = dist.get("strategy") in ("ddp", "fsdp")
    processes = int(dist.get("nproc_per_node", 1)) if spawned and on_cpu else 1
    batch = int(t["batch_size"])
    world = int(dist.get("nproc_per_node", 1)) if spawned else 1
    # every rank draws the whole step's starts (int64): accumulation_steps × world × batch; with data.input_noise
    # as many noise keys again
    noised = bool(cfg.get("data", {}).get("input_noise"))
    step_windows = 8.0 * (1 + noised) * int(t.get("accumulation_steps", 1)) * world * batch
    try:
        p1, _, _ = _measure(m, 1, 0)
        p2, _, _ = _measure(m, 2, 0)
        params = p1 + (p2 - p1) * (int(m["num_layers"]) - 1)
        weights = 4 * FP32 * params  # weights, gradients, exp_avg, exp_avg_sq
        if dist.get("strategy") == "fsdp":  # a 1/world shard, plus one block gathered whole
            weights = weights / world + gathered_block(p2 - p1)
        if weights > available_memory(t)[0]:  # already too big: the activations need not be traced
            return MemoryEstimate(params, weights, 0.0, 0.0, processes, step_windows)
        _, s1, l1 = _measure(m, 1, batch)
        _, s2, l2 = _measure(m, 2, batch)
    except (RuntimeError, OverflowError, MemoryError) as e:  # shapes past int64: "more than can be represented"
        if "numel" in str(e) or "overflow" in str(e).lower() or isinstance(e, (OverflowError, MemoryError)):
            return MemoryEstimate(math.inf, math.inf, math.inf, math.inf, processes, step_windows)
        raise
    activations = s1 + (s2 - s1) * (int(m["num_layers"]) - 1)
    return MemoryEstimate(params, weights, float(activations), float(max(l1, l2)), processes, step_windows)


def available_memory(trainer: dict[str, Any]) -> tuple[float, str]:
    """Bytes this run may use, and where that figure comes from."""
    device = trainer.get("device", "auto")
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return float(torch.cuda.get_device_properties(0).total_memory), "GPU memory"
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if ":" in line}
        return float(info["MemAvailable"]), "available RAM"
    except (OSError, KeyError, ValueError, IndexError):  # not Linux
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "RAM"


def check_memory(cfg: dict[str, Any]) -> MemoryEstimate | None:
    """Refuse (one line) a config whose estimated peak exceeds this machine; ``None`` when the check is off."""
    if cfg["trainer"].get("check_memory") is False:  # absent in a partial config (Python callers): checked
        return None
    est = estimate_memory(cfg)
    have, what = available_memory(cfg["trainer"])
    if est.total > have:
        if not math.isfinite(est.total):
            raise ConfigError("this run needs more memory than can be represented (a tensor's size overflows "
                              "64 bits); lower trainer.batch_size, model.seq_len or the model's size")
        per = f" ({est.processes} processes × {human_bytes(est.per_process)})" if est.processes > 1 else ""
        parts = f"parameters, gradients and AdamW state {human_bytes(est.weights)}"
        if est.activations or est.largest:
            parts += (f", activations of one micro-batch {human_bytes(est.activations)}, largest intermediate "
                      f"{human_bytes(est.largest)}")
        if est.step_windows > est.weights:  # e.g. trainer.accumulation_steps in the quadrillions
            parts += f", one step's window starts {human_bytes(est.step_windows)}"
        raise ConfigError(
            f"this run needs about {human_bytes(est.total)} of memory{per} but the machine has "
            f"{human_bytes(have)} of {what} ({parts}); lower trainer.batch_size (with "
            f"trainer.accumulation_steps for the same step), model.seq_len or the model's size, "
            f"or set {OVERRIDE} to try anyway"
        )
    return est
