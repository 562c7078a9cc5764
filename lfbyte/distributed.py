"""Process set-up (spawn workers from inside a Hydra job, or join a torchrun launch) and FSDP2 sharding.

Two strategies: ``ddp`` (every rank holds the whole model, gradients are all-reduced) and ``fsdp``
(FSDP2's ``fully_shard``: every rank holds 1/N of the parameters, gradients and optimizer state;
each block's parameters are all-gathered just for its forward and backward). Two ways in:

* ``distributed=ddp`` (or ``fsdp``) from a plain ``python -m lfbyte.train`` (or a Hydra multirun
  job): the job resolves its config once and spawns ``nproc_per_node`` workers
  itself; they share the job's one run directory.
* ``torchrun ... -m lfbyte.train`` (multi-node): every rank is started by torchrun,
  which sets ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``/``MASTER_ADDR``; we only join.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from .errors import ConfigError, LFByteError


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
        raise LFByteError(f"a training worker died ({e}); the other workers were stopped") from None
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


# ------------------------------------------------------------------ FSDP2
SHARDABLE = "blocks"  # the ModuleList of residual blocks every lfbyte model has: one FSDP unit per block


def sharding_problem(model: nn.Module) -> str | None:
    """Why ``distributed=fsdp`` cannot shard ``model``, or None (checked before anything is spawned).

    (fp16 is refused by the config check: GradScaler's unscale is not wired to sharded gradients here,
    and bf16 needs no scaler.)"""
    blocks = getattr(model, SHARDABLE, None)
    if not isinstance(blocks, nn.ModuleList) or not len(blocks):
        return (f"distributed=fsdp shards a model block by block, but {type(model).__name__} has no "
                f"'{SHARDABLE}' ModuleList of blocks; use distributed=ddp")
    return None


def shard_model(
    model: nn.Module, precision: str, device: torch.device, reshard_after_forward: bool = True
) -> nn.Module:
    """Apply FSDP2 in place: ``fully_shard`` each block, then the root (embedding, final norm, head).

    ``model`` may be built on the CPU: each rank's shard is moved to ``device``, so no GPU ever holds
    the whole model.
    With bf16 the policy all-gathers parameters in bf16 for compute and reduce-scatters gradients in
    fp32, so the sharded fp32 master weights and AdamW state see full-precision gradients.
    ``reshard_after_forward=False`` keeps each block's gathered parameters from forward to backward
    (one all-gather per block per step instead of two, at the memory of the unsharded model)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if problem := sharding_problem(model):
        raise ConfigError(problem)
    from .precision import DTYPES

    # our blocks return their decode state (a slice of an activation) beside the output; nothing writes to
    # it in place, which is what FSDP2 warns about on every forward
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    compute = None if precision == "fp32" else DTYPES[precision]
    mp_policy = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in getattr(model, SHARDABLE):
        fully_shard(block, mesh=mesh, mp_policy=mp_policy, reshard_after_forward=reshard_after_forward)
    # the root's own parameters (embedding, tied head) are used at both ends of the forward: keep them
    fully_shard(model, mesh=mesh, mp_policy=mp_policy, reshard_after_forward=False)
    return model


def is_sharded(model: nn.Module) -> bool:
    """``model`` was sharded with FSDP2 (its parameters are DTensors; its forward is a collective)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def accumulate(model: nn.Module, last: bool) -> contextlib.AbstractContextManager:
    """The context for one micro-step of gradient accumulation: sync gradients only on the ``last``.

    DDP: ``no_sync`` until the last micro-step. FSDP: no reduce-scatter and no resharding until the
    last (the unsharded gradients accumulate locally; parameters stay gathered between micro-steps)."""
    if is_sharded(model):
        model.set_requires_gradient_sync(last)
        model.set_reshard_after_backward(last)
        return contextlib.nullcontext()
    if last or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def full_value(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's global value (e.g. the gradient norm over sharded gradients); other tensors as they are."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t
