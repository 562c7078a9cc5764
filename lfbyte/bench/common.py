"""What every benchmark shares: how a step is timed, and what machine the numbers came from."""

from __future__ import annotations

import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], steps: int, warmup: int, device: torch.device) -> float:
    """Median wall time of ``fn`` over ``steps`` calls after ``warmup`` untimed ones (medians shrug off a
    neighbour's burst; means do not)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def environment(device: torch.device) -> dict[str, Any]:
    """The machine a table was measured on: printed beside every table, stored with every raw result."""
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def command(module: str) -> str:
    """The command line that produced a table, for its caption."""
    args = " ".join(sys.argv[1:])
    return f"python -m {module}" + (f" {args}" if args else "")
