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

:func:`make_checkpoint` writes that dict, :func:`restore_model` and :func:`restore_training` read it:
this module is the only place its keys are spelled.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import CheckpointError


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
) -> dict[str, Any]:
    """The dict a checkpoint file holds; without optimizer/scaler/trainer_state it holds weights only."""
    payload: dict[str, Any] = {"model_state_dict": model.state_dict(), "config": config, "metrics": dict(metrics or {})}
    if trainer_state is not None:
        assert optimizer is not None and scaler is not None, "a resumable checkpoint needs the optimizer and scaler"
        payload.update(optimizer_state_dict=optimizer.state_dict(), scaler_state_dict=scaler.state_dict(),
                       trainer_state=trainer_state)
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


STEP_RE = re.compile(r"^step_(\d+)\.pth$")
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


def save_checkpoint(
    payload: dict, ckpt_dir: Path, step: int, keep_last: int, epoch_end: int | None = None
) -> Path:
    ckpt_dir = Path(ckpt_dir)
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot create checkpoint folder {ckpt_dir}: {e.strerror}; "
                              "set trainer.save_path to a writable folder") from e
    path = ckpt_dir / f"step_{step:07d}.pth"
    atomic_save(payload, path)
    _link(path, ckpt_dir / "last.pth")
    if epoch_end is not None:
        _link(path, ckpt_dir / f"model_epoch_{epoch_end}.pth")
    steps = sorted(p for p in ckpt_dir.iterdir() if STEP_RE.match(p.name))
    for old in steps[: max(0, len(steps) - max(1, keep_last))]:
        old.unlink(missing_ok=True)
    _fsync_dir(ckpt_dir)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load with ``weights_only=True``: tensors and plain containers only, never arbitrary objects."""
    path = Path(path)
    try:
        found = path.is_file()
    except OSError as e:  # e.g. a name longer than the filesystem allows
        raise CheckpointError(f"checkpoint {str(path)[:200]} cannot be read ({e.strerror or e})") from None
    if not found:
        raise CheckpointError(f"checkpoint {path} does not exist")
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
    if not isinstance(obj, dict) or "model_state_dict" not in obj:
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
    """Resume candidates, newest first: ``last.pth`` then ``step_*.pth`` by step."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    steps = sorted((p for p in ckpt_dir.iterdir() if STEP_RE.match(p.name)), reverse=True)
    last = ckpt_dir / "last.pth"
    return ([last] if last.is_file() else []) + steps


def load_latest(
    ckpt_dir: Path, map_location: str | torch.device = "cpu", warn: bool = True
) -> tuple[Path, dict] | None:
    """The newest loadable checkpoint; unloadable ones are skipped with a warning on stderr."""
    for path in checkpoint_candidates(ckpt_dir):
        try:
            return path, load_checkpoint(path, map_location)
        except CheckpointError as e:
            if warn:
                print(f"warning: {e}; trying an older one", file=sys.stderr, flush=True)
    return None


def resume_latest(
    ckpt_dir: Path, map_location: str | torch.device = "cpu", warn: bool = True
) -> tuple[Path, dict] | None:
    """What ``trainer.resume=auto`` continues: the newest loadable checkpoint, ``None`` for a fresh start.

    Checkpoints that exist but none of which loads are an error: never train over them."""
    found = load_latest(ckpt_dir, map_location, warn)
    if found is None and (candidates := checkpoint_candidates(ckpt_dir)):
        try:
            load_checkpoint(candidates[0], map_location)
            why = ""
        except CheckpointError as e:
            why = f" (the newest: {e})"
        raise CheckpointError(f"trainer.resume=auto: no checkpoint in {ckpt_dir} could be loaded{why}; move them "
                              "away to start fresh, or give trainer.resume=<path to a good checkpoint>")
    return found
