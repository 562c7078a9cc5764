"""Metric sinks: a local JSONL file always (rank 0), Weights & Biases when ``logger=wandb``."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class Logger:
    """``log(metrics, step)`` appends a JSON line to ``metrics.jsonl`` and forwards to W&B."""

    def __init__(self, run_dir: Path, cfg: dict, full_config: dict, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.wandb_run = None
        if enabled and cfg.get("name", "none") == "wandb":
            self.wandb_run = _init_wandb(run_dir, cfg, full_config)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in row.items() if k != "step"}, step=step)

    def log_text(self, key: str, text: str, step: int) -> None:
        if self.enabled and self.wandb_run is not None:
            import wandb

            table = wandb.Table(columns=["step", "text"], data=[[step, text]])
            self.wandb_run.log({key: table}, step=step)

    def finish(self, exit_code: int = 0) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=exit_code)
            self.wandb_run = None


def wandb_mode(requested: str) -> str:
    """``auto``: online when an API key is configured, offline otherwise (sync later)."""
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path(os.path.expanduser("~/.netrc"))
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


def _init_wandb(run_dir: Path, cfg: dict, full_config: dict) -> Any:
    import wandb

    return wandb.init(
        project=cfg.get("project", "lfbyte"),
        entity=cfg.get("entity"),
        group=cfg.get("group"),
        job_type=cfg.get("job_type"),
        tags=list(cfg.get("tags") or []),
        name=cfg.get("run_name"),
        mode=wandb_mode(cfg.get("mode", "auto")),
        dir=str(run_dir),
        config=full_config,
        reinit="finish_previous",
    )
