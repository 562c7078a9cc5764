"""``python -m lfbyte.export``: a run's checkpoint as one plain, weights-only ``.pth`` file.

A sharded checkpoint (``distributed=fsdp``) is a folder of per-rank shards; this gathers it (no process
group needed) into the dict a single-process run writes without its training state: ``model_state_dict``,
``config`` and ``metrics``. ``torch.load(path, weights_only=True)`` reads it anywhere, and ``load_run(run_dir,
checkpoint=path)`` rebuilds the model from it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from .checkpoint import atomic_save, make_checkpoint
from .errors import ConfigError


def export(run_dir: str | Path, checkpoint: str | int | Path = "last", out: str | Path | None = None,
           overwrite: bool = False) -> Path:
    """Write ``run_dir``'s ``checkpoint`` as a plain weights-only file; returns its path."""
    from .runs import load_run

    run = load_run(run_dir, checkpoint, "cpu")  # rebuilds the model: the weights are checked against its config
    name = run.checkpoint.name if run.checkpoint.name.endswith(".pth") else f"{run.checkpoint.name}.pth"
    dst = Path(out) if out else run.run_dir / name
    if dst.exists() and not overwrite:
        raise ConfigError(f"{dst} exists; pass out=<another file> or overwrite=true")
    atomic_save(make_checkpoint(run.model, run.config, run.metrics), dst)
    return dst


def run_cli(cfg: dict[str, Any]) -> str:
    from .runs import as_path, latest_run

    if not isinstance(cfg.get("overwrite"), bool):
        raise ConfigError(f"overwrite={cfg.get('overwrite')!r} must be true or false")
    run_dir = cfg.get("run_dir") or latest_run(cfg.get("runs_root") or "outputs")
    out = as_path(cfg["out"], "out") if cfg.get("out") is not None else None
    dst = export(run_dir, cfg.get("checkpoint") or "last", out, cfg["overwrite"])
    return f"wrote {dst} ({os.path.getsize(dst):,} bytes): model_state_dict, config, metrics"


def _hydra_entry(cfg: DictConfig) -> None:
    from .cli import one_line_errors
    from .config import to_plain

    with one_line_errors():
        print(run_cli(to_plain(cfg)), flush=True)


def main() -> None:
    """``python -m lfbyte.export [key=value ...]``; see conf/export.yaml."""
    from .cli import hydra_cli

    hydra_cli("export", _hydra_entry, flat=True)


if __name__ == "__main__":
    main()
