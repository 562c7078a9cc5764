"""DDP process set-up: spawn workers from inside a Hydra job, or join a torchrun launch.

Two ways in:

* ``distributed=ddp`` from a plain ``python -m lfbyte.train`` (or a Hydra multirun
  job): the job resolves its config once and spawns ``nproc_per_node`` workers
  itself; they share the job's one run directory.
* ``torchrun ... -m lfbyte.train`` (multi-node): every rank is started by torchrun,
  which sets ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``/``MASTER_ADDR``; we only join.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .errors import LFByteError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    ddp: bool = False  # a process group exists (also with one process: the NCCL/gloo code path runs)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.ddp or self.world_size > 1


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ and "TORCHELASTIC_RUN_ID" in os.environ


def torchrun_info() -> DistInfo:
    return DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]), ddp=True)


def pick_backend(requested: str, device: torch.device) -> str:
    if requested != "auto":
        return requested
    return "nccl" if device.type == "cuda" else "gloo"


def init_process_group(info: DistInfo, backend: str, device: torch.device) -> None:
    """Join the process group (env:// rendezvous: MASTER_ADDR/MASTER_PORT are set by the launcher)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kwargs: dict[str, Any] = {"backend": backend, "rank": info.rank, "world_size": info.world_size}
    if backend == "nccl":
        kwargs["device_id"] = device
    dist.init_process_group(**kwargs)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(local_rank: int, fn: Callable, nproc: int, env: dict, errors: Any, args: tuple) -> None:
    os.environ.update(env)
    os.environ.update({"RANK": str(local_rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(nproc)})
    try:
        fn(DistInfo(local_rank, nproc, local_rank, ddp=True), *args)
    except LFByteError as e:
        errors.put(f"{type(e).__name__}:{e}")
        raise SystemExit(2) from None


def spawn(fn: Callable, nproc: int, args: tuple, master_addr: str = "127.0.0.1", port: int | None = None) -> None:
    """Run ``fn(DistInfo, *args)`` on ``nproc`` local processes and wait for them.

    If one worker fails, torch terminates the others (no rank is left hanging in a
    collective) and the failure is raised here: a user error as its one-line
    message, anything else with the worker's traceback. SIGTERM to this process is
    forwarded to the workers so they checkpoint and exit cleanly.
    """
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    env = {"MASTER_ADDR": master_addr, "MASTER_PORT": str(port or free_port())}
    procs = mp.start_processes(_entry, args=(fn, nproc, env, errors, args), nprocs=nproc, join=False,
                               start_method="spawn")

    def forward(signum: int, _frame: object) -> None:
        for p in procs.processes:
            if p.is_alive():
                os.kill(p.pid, signum)

    old = signal.signal(signal.SIGTERM, forward)
    try:
        while not procs.join(timeout=0.5):
            pass
    except mp.ProcessExitedException as e:
        if not errors.empty():
            from . import errors as errmod

            kind, msg = errors.get().split(":", 1)
            raise getattr(errmod, kind, LFByteError)(msg) from None
        raise LFByteError(f"a DDP worker died ({e}); the other workers were stopped") from None
    finally:
        signal.signal(signal.SIGTERM, old)


def all_reduce(t: torch.Tensor, op: dist.ReduceOp = dist.ReduceOp.SUM) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=op)
    return t


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` (in rank order) on every rank; ``[obj]`` without DDP."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
