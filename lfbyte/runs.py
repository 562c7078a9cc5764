"""Run directories: find them, and rebuild a run's exact model from its config and a checkpoint.

Shared by generation, the app, reports and benchmarks::

    from lfbyte.runs import load_run, latest_run
    run = load_run(latest_run("outputs"))       # newest checkpoint of the newest run
    print(run.model, run.step, run.metrics.get("val_bpb"))

A run directory holds ``config.yaml`` (the resolved config its model is built from) and
``checkpoints/`` (or the ``trainer.save_path`` it was trained with): see :mod:`lfbyte.checkpoint`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from .checkpoint import (
    checkpoint_candidates,
    checkpoint_dir,
    is_checkpoint,
    load_checkpoint,
    restore_model,
    saved_config,
    saved_metrics,
    saved_step,
)
from .device import resolve_device
from .errors import CheckpointError, ConfigError, shown
from .model import build_model


@dataclass
class Run:
    """A model rebuilt from a run directory, with what it was built from."""

    model: nn.Module
    config: dict[str, Any]  # the run's resolved config (``config["model"]`` built the model)
    run_dir: Path
    checkpoint: Path
    step: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # the eval stored with the checkpoint (val_bpb, ...)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def _read_config(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path} is not readable YAML ({str(e).splitlines()[0]}); restore it from the run") from e
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        raise ConfigError(f"{path} has no model: section; is it an lfbyte run config?")
    return cfg


def _checkpoint_dir(run_dir: Path, cfg: dict[str, Any] | None) -> Path:
    found = checkpoint_dir(cfg, run_dir)
    return found if found.is_dir() else run_dir / "checkpoints"  # a save_path not on this machine: the run's own


def _resolve_checkpoint(run_dir: Path, ckpt_dir: Path, name: str | int | Path) -> Path:
    """``last`` (newest), a name in ``checkpoints/`` (a file with or without ``.pth``, or a sharded folder), a step
    number, or a path."""
    name = str(name)
    if name in ("", "last"):
        found = checkpoint_candidates(ckpt_dir)
        if not found:
            raise CheckpointError(
                f"no checkpoint in {ckpt_dir}; train the run first (python -m lfbyte.train ...) "
                "or pass checkpoint=<path to a .pth file>"
            )
        return found[0]
    p = Path(name).expanduser()
    candidates = [p, run_dir / p, ckpt_dir / p, ckpt_dir / f"{name}.pth"]
    if name.isdigit():
        candidates += [ckpt_dir / f"step_{int(name):07d}.pth", ckpt_dir / f"step_{int(name):07d}"]
    for cand in candidates:
        if is_checkpoint(cand):  # a file, or a sharded checkpoint's folder
            return cand
    available = sorted(q.name for q in ckpt_dir.iterdir() if is_checkpoint(q)) if ckpt_dir.is_dir() else []
    raise CheckpointError(
        f"checkpoint {name!r} not found in {ckpt_dir}; available: {', '.join(available) or 'none'}"
    )


def load_run(
    run_dir: str | Path, checkpoint: str | int | Path = "last", device: str | torch.device | None = None
) -> Run:
    """Rebuild the exact model of a run directory (``outputs/runs/<ts>`` or a multirun job folder).

    The model comes from ``run_dir/config.yaml`` (or the config embedded in the checkpoint) and
    its weights from ``checkpoint``: ``last`` (newest), a name in ``checkpoints/`` such as
    ``model_epoch_1`` or ``step_0000200``, a step number, or a path. Checkpoints are loaded with
    ``weights_only=True``: tensors and plain data only. ``device``: ``auto`` (cuda when visible),
    ``cpu``, ``cuda``, ``cuda:1``. Every failure is a :class:`~lfbyte.errors.LFByteError` with one line.
    """
    run_dir = as_path(run_dir, "run_dir")
    try:
        is_dir, exists = run_dir.is_dir(), run_dir.exists()
    except OSError as e:  # e.g. a name longer than the filesystem allows
        raise CheckpointError(f"run directory {shown(run_dir, 120)} cannot be read ({e.strerror or e}); "
                              "pass run_dir=<a folder under outputs/>") from None
    if not is_dir:
        what = "is a file, not a folder" if exists else "does not exist"
        raise CheckpointError(f"run directory {shown(run_dir)} {what}; pass run_dir=<a folder under outputs/>")
    target = resolve_device(device, "device")
    cfg = _read_config(run_dir)
    if cfg is None and not (run_dir / "checkpoints").is_dir() and (runs := find_runs(run_dir)):
        # e.g. a multirun sweep folder, or outputs/ itself
        raise CheckpointError(
            f"{run_dir} is not a run directory but holds {len(runs)} run(s) below it; pass one as run_dir=, "
            f"e.g. {runs[0]}"
        )
    ckpt_dir = _checkpoint_dir(run_dir, cfg)
    path = _resolve_checkpoint(run_dir, ckpt_dir, checkpoint)
    payload = load_checkpoint(path, map_location="cpu")
    cfg_source = str(run_dir / "config.yaml")
    if cfg is None:
        cfg, cfg_source = saved_config(payload), f"the config embedded in {path.name}"
        if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
            raise CheckpointError(f"{run_dir} has no config.yaml and {path} embeds no config; it cannot be rebuilt")
    try:
        model = build_model(cfg["model"])
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model config in {cfg_source}: {e}") from None
    restore_model(model, payload, path, cfg_source)
    model.to(target).eval()
    return Run(
        model=model,
        config=cfg,
        run_dir=run_dir,
        checkpoint=path,
        step=saved_step(payload),
        metrics=saved_metrics(payload),
    )


def as_path(value: Any, key: str) -> Path:
    """A path option as a Path; a number or a list there (``run_dir=1``) is one clear line."""
    if not isinstance(value, (str, Path)) or not str(value):
        raise ConfigError(f"{key}={value!r} must be a path to a folder")
    return Path(value).expanduser()


def find_runs(root: str | Path = "outputs", max_depth: int = 8) -> list[Path]:
    """Run directories under ``root`` that hold a checkpoint, newest checkpoint first.

    Walks at most ``max_depth`` levels (multirun jobs sit 3 below ``outputs/``) and skips
    hidden folders (``.hydra/``) and what lives inside a run (``checkpoints/``, ``wandb/``).
    """
    root = as_path(root, "runs_root")
    found: list[tuple[float, Path]] = []
    for folder, subdirs, files in os.walk(root):
        here = Path(folder)
        if "config.yaml" in files and (ckpts := checkpoint_candidates(here / "checkpoints")):
            found.append((max(p.stat().st_mtime for p in ckpts), here))
        depth = len(here.relative_to(root).parts)
        subdirs[:] = [] if depth >= max_depth else [
            d for d in subdirs if not d.startswith(".") and d not in ("checkpoints", "wandb")
        ]
    return [p for _, p in sorted(found, key=lambda x: x[0], reverse=True)]


def runs_root_of(run_dir: str | Path) -> Path:
    """The folder whose runs ``run_dir`` belongs with: the nearest ``outputs/`` above it (Hydra's output
    root, however deep the run sits: ``runs/<ts>``, ``multirun/<sweep>/<job>``), else its parent folder."""
    path = as_path(run_dir, "run_dir").absolute()
    return next((p for p in path.parents if p.name == "outputs"), path.parent)


def latest_run(root: str | Path = "outputs") -> Path:
    runs = find_runs(root)
    if not runs:
        raise CheckpointError(
            f"no run with a checkpoint under {root}/; train one (python -m lfbyte.train) or pass run_dir=<dir>"
        )
    return runs[0]




def describe_run(run: Run) -> str:
    """One line: where the model came from and how good it was."""
    m = run.config["model"]
    bpb = run.metrics.get("val_bpb")
    parts = [
        f"run {run.run_dir}",
        f"checkpoint {run.checkpoint.name}",
        f"step {run.step}" if run.step is not None else None,
        f"val_bpb {bpb:.3f}" if isinstance(bpb, (int, float)) else None,
        f"{m.get('arch', 'lfbyte')} {run.model.num_parameters() / 1e6:.2f}M params",
        f"seq_len {m['seq_len']}",
        f"on {run.device}",
    ]
    return ", ".join(p for p in parts if p)
