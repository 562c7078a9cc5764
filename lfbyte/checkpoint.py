"""Checkpoint files: atomic writes, rotation, safe (weights-only) loading, resume discovery.

Layout in ``checkpoints/``::

    step_0001200.pth     every save (the newest ``keep_last`` are kept)
    last.pth             hard link to the newest save (always a complete file)
    model_epoch_N.pth    hard link to the save at the end of epoch N (never rotated)

Every file is a dict of tensors and plain data (loaded with ``weights_only=True``)::

    model_state_dict       the weights (all a model needs: ``load_run`` rebuilds it from ``config``)
    config                 the resolved run config the model was built from
    metrics                the last evaluation (val_bpb, ...)
    optimizer_state_dict   \
    scaler_state_dict       } what exact resume needs; absent from a weights-only file
    trainer_state          /  (``Trainer.state_dict()``: step, time, data position, every rank's RNG)

A sharded run (``distributed=fsdp``) writes folders instead, with ``torch.distributed.checkpoint``::

    step_0001200/        .metadata + one __<rank>_0.distcp per rank: the model and AdamW state, as shards
                         checkpoint.pth: the rest of the dict above (config, metrics, scaler, trainer_state)
    model_epoch_N        symlink to the folder saved at the end of epoch N (never rotated)

A folder is written as ``.step_*.tmp`` and renamed only once every rank's shard, the metadata and
``checkpoint.pth`` are on disk, so ``resume=auto`` never sees a half-written one. Any number of ranks
can resume it (the shards are re-cut on load), and :func:`load_checkpoint` reads it like a file (the
weights gathered into one ``model_state_dict``, no process group needed): ``load_run``, generate, the
app and reports do not care which kind a run wrote; ``python -m lfbyte.export`` writes a plain file.

:func:`make_checkpoint` writes that dict, :func:`restore_model`, :func:`restore_training` and
:func:`restore_sharded` read it: this module is the only place its keys are spelled.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import CheckpointError, shown


def checkpoint_dir(cfg: dict[str, Any] | None, run_dir: str | Path) -> Path:
    """Where a run's checkpoints live: ``trainer.save_path``, else ``<run dir>/checkpoints``."""
    save_path = ((cfg or {}).get("trainer") or {}).get("save_path")
    return Path(save_path) if save_path else Path(run_dir) / "checkpoints"


def make_checkpoint(
    model: nn.Module,
    config: dict[str, Any] | None,
    metrics: dict[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: torch.amp.GradScaler | None = None,
    trainer_state: dict[str, Any] | None = None,
    sharded: bool = False,
) -> dict[str, Any]:
    """The dict a checkpoint file holds; without optimizer/scaler/trainer_state it holds weights only.

    ``sharded``: the dict beside the shards of :func:`save_sharded` (model and optimizer live in the shards)."""
    payload: dict[str, Any] = {"config": config, "metrics": dict(metrics or {})}
    if not sharded:
        payload["model_state_dict"] = model.state_dict()
    if trainer_state is not None:
        assert optimizer is not None and scaler is not None, "a resumable checkpoint needs the optimizer and scaler"
        payload.update(scaler_state_dict=scaler.state_dict(), trainer_state=trainer_state)
        if not sharded:
            payload["optimizer_state_dict"] = optimizer.state_dict()
    return payload


def saved_config(payload: dict[str, Any]) -> dict[str, Any] | None:
    """The run config a checkpoint embeds (None in files from before configs were embedded)."""
    cfg = payload.get("config")
    return cfg if isinstance(cfg, dict) else None


def saved_step(payload: dict[str, Any]) -> int | None:
    """The optimizer step a checkpoint was written at (None for a weights-only file)."""
    return (payload.get("trainer_state") or {}).get("step")


def saved_metrics(payload: dict[str, Any]) -> dict[str, Any]:
    """The evaluation stored with a checkpoint (val_bpb, ...)."""
    return dict(payload.get("metrics") or {})


def check_state_dict(model: nn.Module, state: dict[str, Tensor], ckpt: Path | str, source: str) -> None:
    """Name the missing/unexpected keys and mismatched shapes in one line, before torch raises."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape checkpoint vs config", shapes)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            problems.append(f"{label}: {', '.join(items[:3])}{more}")
    if problems:
        raise CheckpointError(
            f"{ckpt} does not match the model in {source} ({'; '.join(problems)}); "
            "the model config must be the one the checkpoint was trained with"
        )


def restore_model(model: nn.Module, payload: dict[str, Any], ckpt: Path | str, source: str) -> None:
    """Load a checkpoint's weights into ``model`` (built from ``source``), or say in one line why they do not fit."""
    state = payload["model_state_dict"]
    check_state_dict(model, state, ckpt, source)
    model.load_state_dict(state)


def restore_training(
    payload: dict[str, Any], ckpt: Path | str, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler
) -> dict[str, Any]:
    """Load the optimizer and scaler state; returns the trainer state for ``Trainer.load_state_dict``."""
    if "trainer_state" not in payload:
        raise CheckpointError(f"{ckpt} holds weights only (no trainer_state); it cannot be resumed from")
    optimizer.load_state_dict(payload["optimizer_state_dict"])
    scaler.load_state_dict(payload["scaler_state_dict"])
    return payload["trainer_state"]


STEP_RE = re.compile(r"^step_(\d+)(\.pth)?$")  # a file, or a sharded checkpoint's folder
SHARDED_META = "checkpoint.pth"  # in a sharded checkpoint's folder: everything but the shards
_TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename over ``path``.

    A crash (or SIGKILL) at any moment leaves either the old file or the new one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch's zip writer re-raises a failed write as RuntimeError
        tmp.unlink(missing_ok=True)
        cause: BaseException | None = e
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        if cause is None and not isinstance(e, OSError):
            raise
        why = cause.strerror or str(cause) if isinstance(cause, OSError) else str(e)
        raise CheckpointError(f"could not write checkpoint {path}: {why}; "
                              "free disk space or set trainer.save_path to a writable folder") from e
    _fsync_dir(path.parent)


def ensure_writable(folder: Path, what: str) -> None:
    """Create ``folder`` and prove a file can be written there: found before training, not at the first save."""
    folder = Path(folder)
    probe = folder / f".write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
    except OSError as e:
        raise CheckpointError(f"cannot write to {what} {folder}: {e.strerror or e}; "
                              "point it at a writable folder with free space") from None
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass


def _link(src: Path, dst: Path) -> None:
    """Atomically make ``dst`` the same file as ``src`` (hard link; copy where links fail)."""
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _make_dir(ckpt_dir: Path) -> None:
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot create checkpoint folder {ckpt_dir}: {e.strerror}; "
                              "set trainer.save_path to a writable folder") from e


def save_checkpoint(
    payload: dict, ckpt_dir: Path, step: int, keep_last: int, epoch_end: int | None = None
) -> Path:
    ckpt_dir = Path(ckpt_dir)
    _make_dir(ckpt_dir)
    path = ckpt_dir / f"step_{step:07d}.pth"
    atomic_save(payload, path)
    _link(path, ckpt_dir / "last.pth")
    if epoch_end is not None:
        _link(path, ckpt_dir / f"model_epoch_{epoch_end}.pth")
    steps = sorted(p for p in ckpt_dir.iterdir() if STEP_RE.match(p.name) and p.is_file())
    for old in steps[: max(0, len(steps) - max(1, keep_last))]:
        old.unlink(missing_ok=True)
    _fsync_dir(ckpt_dir)
    return path


# ------------------------------------------------------------------ sharded checkpoints (FSDP2 + DCP)
def is_sharded_checkpoint(path: Path) -> bool:
    """A complete sharded checkpoint folder (DCP's ``.metadata`` is written last, after every shard)."""
    try:
        return path.is_dir() and (path / ".metadata").is_file() and (path / SHARDED_META).is_file()
    except OSError:
        return False


def is_checkpoint(path: Path) -> bool:
    """A checkpoint file, or a complete sharded checkpoint folder."""
    try:
        return path.is_file() or is_sharded_checkpoint(path)
    except OSError:  # e.g. a name longer than the filesystem allows
        return False


def _training_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Model and optimizer state keyed by parameter name, as this process holds it (a shard under FSDP):
    the form DCP writes and re-cuts for any number of ranks."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _remove_tree(path: Path) -> None:
    """Delete a checkpoint folder so that no moment shows a partial one under a checkpoint's name."""
    if not path.exists():
        return
    trash = path.with_name(f".{path.name}.trash-{os.getpid()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def save_sharded(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    payload: dict[str, Any],
    ckpt_dir: Path,
    step: int,
    keep_last: int,
    epoch_end: int | None = None,
) -> Path:
    """Every rank writes its shard of the model and AdamW state; rank 0 writes ``payload`` beside them.

    Collective: every rank calls it. The folder becomes ``step_NNNNNNN`` by one rename after all of it
    is on disk (fsynced), so a crash or SIGKILL at any moment leaves the previous checkpoints as they were."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    main = not dist.is_initialized() or dist.get_rank() == 0
    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / f"step_{step:07d}"
    tmp = ckpt_dir / f".{final.name}.tmp"  # the same name on every rank (and node, on a shared filesystem)
    if main:
        _make_dir(ckpt_dir)
        shutil.rmtree(tmp, ignore_errors=True)  # left by a save that was killed
        tmp.mkdir()
    _barrier()
    try:
        # DCP fsyncs every file it writes; one process without a group (no_dist) is fine: say nothing
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.save(_training_state(model, optimizer), checkpoint_id=tmp, no_dist=_single_process())
    except Exception as e:  # noqa: BLE001 - DCP raises its own exception type, wrapping each rank's cause
        raise CheckpointError(f"could not write sharded checkpoint {final}: {str(e).splitlines()[0][:200]}; "
                              "free disk space or set trainer.save_path to a writable folder") from e
    if main:
        atomic_save(payload, tmp / SHARDED_META)
        _fsync_dir(tmp)
        _remove_tree(final)  # the same step saved again (e.g. an epoch end that is also the last step)
        os.replace(tmp, final)
        if epoch_end is not None:
            _symlink(final.name, ckpt_dir / f"model_epoch_{epoch_end}")
        kept = {os.readlink(q) for q in ckpt_dir.iterdir() if q.name.startswith("model_epoch_") and q.is_symlink()}
        folders = sorted(q for q in ckpt_dir.iterdir() if STEP_RE.match(q.name) and q.is_dir())
        for old in folders[: max(0, len(folders) - max(1, keep_last))]:
            if old.name not in kept:
                _remove_tree(old)
        _fsync_dir(ckpt_dir)
    _barrier()  # when any rank returns, the checkpoint is complete
    return final


def _symlink(target: str, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, dst)


def _dcp_shapes(path: Path) -> dict[str, Tensor]:
    """The model tensors a sharded checkpoint holds, as empty (meta) tensors of their global shapes."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    try:
        meta = FileSystemReader(str(path)).read_metadata()
    except Exception as e:  # noqa: BLE001 - a truncated or foreign .metadata: one line
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated (its .metadata: "
                              f"{str(e).splitlines()[0][:160] if str(e) else type(e).__name__})") from e
    return {
        key.removeprefix("model."): torch.empty(md.size, dtype=md.properties.dtype, device="meta")
        for key, md in meta.state_dict_metadata.items()
        if key.startswith("model.") and isinstance(md, TensorStorageMetadata)
    }


def _single_process() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized())


def _dcp_load(state: dict[str, Any], path: Path, no_dist: bool) -> None:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():  # DCP warns on every load without a process group, even when asked to
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=path, no_dist=no_dist)


def _gather_sharded_weights(path: Path) -> dict[str, Tensor]:
    """Every shard of a sharded checkpoint's model, read into one full state dict in this process alone."""
    state = {k: torch.empty(v.shape, dtype=v.dtype) for k, v in _dcp_shapes(path).items()}
    try:
        _dcp_load({"model": state}, path, no_dist=True)
    except Exception as e:  # noqa: BLE001 - a missing or damaged shard: one line
        raise CheckpointError(f"checkpoint {path} is corrupt or incomplete ({str(e).splitlines()[0][:160]})") from e
    return state


def restore_sharded(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    payload: dict[str, Any],
    ckpt: Path,
    source: str,
) -> dict[str, Any]:
    """Resume where one side is sharded: a sharded checkpoint into any model (FSDP on any number of ranks,
    DDP, one process), or a plain checkpoint into an FSDP model. Collective when ``model`` is sharded.
    Returns the trainer state for ``Trainer.load_state_dict``."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    if "trainer_state" not in payload:
        raise CheckpointError(f"{ckpt} holds weights only (no trainer_state); it cannot be resumed from")
    if is_sharded_checkpoint(Path(ckpt)):
        check_state_dict(model, _dcp_shapes(Path(ckpt)), ckpt, source)
        state = _training_state(model, optimizer)
        # each rank reads the pieces of its own shards, whatever N wrote them; without a process group
        # (one plain process) the whole tensors
        _dcp_load(state, Path(ckpt), no_dist=_single_process())
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, optimizer, state["optim"])
    else:  # every rank reads the whole file and keeps its shard
        full = payload["model_state_dict"]
        check_state_dict(model, full, ckpt, source)
        whole = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, full, options=whole)
        set_optimizer_state_dict(model, optimizer, _optimizer_by_name(model, optimizer, payload), options=whole)
    scaler.load_state_dict(payload["scaler_state_dict"])
    return payload["trainer_state"]


def _optimizer_by_name(model: nn.Module, optimizer: torch.optim.Optimizer, payload: dict[str, Any]) -> dict:
    """A plain ``optimizer.state_dict()`` (parameters numbered in group order) keyed by parameter name.

    The numbering is that of ``optimizer``'s groups, built the same way when the checkpoint was written."""
    saved = payload["optimizer_state_dict"]
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    return {
        "state": {order[i]: v for i, v in saved["state"].items()},
        "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in saved["param_groups"]],
    }


# ------------------------------------------------------------------ loading
def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", weights: bool = True) -> dict:
    """Load with ``weights_only=True``: tensors and plain containers only, never arbitrary objects.

    A sharded checkpoint folder loads like a file: its shards gathered into one ``model_state_dict``
    (``weights=False``: only the rest of the dict, e.g. to read its config or step cheaply)."""
    path = Path(path)
    try:
        found, folder = path.is_file(), path.is_dir()
    except OSError as e:  # e.g. a name longer than the filesystem allows
        raise CheckpointError(f"checkpoint {shown(path, 200)} cannot be read ({e.strerror or e})") from None
    if folder:
        if not is_sharded_checkpoint(path):
            raise CheckpointError(f"{shown(path)} is a folder but not a complete sharded checkpoint (no "
                                  f"{SHARDED_META} or .metadata); give a step_* checkpoint written by lfbyte")
        obj = _load_file(path / SHARDED_META, map_location)
        if weights:
            obj["model_state_dict"] = _gather_sharded_weights(path)
        return obj
    if not found:
        raise CheckpointError(f"checkpoint {shown(path)} does not exist")
    obj = _load_file(path, map_location)
    if "model_state_dict" not in obj:
        raise CheckpointError(f"{path} is not an lfbyte checkpoint (no model_state_dict)")
    return obj


def _load_file(path: Path, map_location: str | torch.device) -> dict:
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure mode becomes one clear line
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        # torch wraps the cause in advice (turn the safety off, file an issue); keep the cause
        first = next((line for line in lines if not line.startswith(_TORCH_ADVICE)), lines[0])
        # a pickle that names a global (a class, a function) is refused; any other unpickling failure
        # ("Unsupported operand", a bad zip) is damage
        why = next((line for line in lines if "GLOBAL" in line or "Unsupported global" in line), None)
        if why is not None:
            raise CheckpointError(
                f"refusing to load {path}: it contains objects other than tensors and plain "
                f"data ({why[:160]}); only load checkpoints you trust, re-saved as state dicts"
            ) from e
        magic = _magic(path)
        if magic and magic not in (b"PK\x03\x04", b"\x80"):  # neither torch's zip format nor a legacy pickle
            raise CheckpointError(f"{path} is not a PyTorch checkpoint file; give a .pth written by lfbyte") from e
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({first[:160]})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} is not an lfbyte checkpoint (no model_state_dict)")
    return obj


def _magic(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return b""
    return head if head.startswith(b"PK") else head[:1]


def checkpoint_candidates(ckpt_dir: Path) -> list[Path]:
    """Resume candidates, newest first: by step, files and sharded folders alike; ``last.pth`` (a link to
    the newest file) in its step's place, or first when its step file has been rotated away or removed."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    order = {p: int(m[1]) for p in ckpt_dir.iterdir()
             if (m := STEP_RE.match(p.name)) and (m[2] or is_sharded_checkpoint(p))}
    steps = list(order)
    last = ckpt_dir / "last.pth"
    if last.is_file():
        same = [p for p in steps if p.is_file() and os.path.samefile(p, last)]
        order[last] = order[same[0]] if same else max(order.values(), default=0) + 1
    # newest step first; at one step, last.pth before its twin, a file before a folder
    rank = {p: (order[p], p == last, p.is_file()) for p in order}
    return sorted(order, key=rank.__getitem__, reverse=True)


def load_latest(
    ckpt_dir: Path, map_location: str | torch.device = "cpu", warn: bool = True, weights: bool = True
) -> tuple[Path, dict] | None:
    """The newest loadable checkpoint; unloadable ones are skipped with a warning on stderr."""
    for path in checkpoint_candidates(ckpt_dir):
        try:
            return path, load_checkpoint(path, map_location, weights)
        except CheckpointError as e:
            if warn:
                print(f"warning: {e}; trying an older one", file=sys.stderr, flush=True)
    return None


def resume_latest(
    ckpt_dir: Path, map_location: str | torch.device = "cpu", warn: bool = True, weights: bool = True
) -> tuple[Path, dict] | None:
    """What ``trainer.resume=auto`` continues: the newest loadable checkpoint, ``None`` for a fresh start.

    Checkpoints that exist but none of which loads are an error: never train over them."""
    found = load_latest(ckpt_dir, map_location, warn, weights)
    if found is None and (candidates := checkpoint_candidates(ckpt_dir)):
        try:
            load_checkpoint(candidates[0], map_location, weights)
            why = ""
        except CheckpointError as e:
            why = f" (the newest: {e})"
        raise CheckpointError(f"trainer.resume=auto: no checkpoint in {ckpt_dir} could be loaded{why}; move them "
                              "away to start fresh, or give trainer.resume=<path to a good checkpoint>")
    return found
