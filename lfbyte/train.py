"""``python -m lfbyte.train [overrides]``: the Hydra entry point, and ``train(cfg)`` for Python use."""

from __future__ import annotations

import json
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .checkpoint import ensure_writable
from .config import hydra_cli, to_plain, validate
from .data import load_corpus, split_corpus
from .distributed import DistInfo, spawn, torchrun_info, under_torchrun
from .errors import ConfigError, LFByteError, print_error


def train(cfg: DictConfig | dict, run_dir: str | Path) -> dict[str, Any]:
    """Validate, prepare data once, then train here, on spawned DDP workers, or as a torchrun rank."""
    from .model import build_model
    from .trainer import train_worker

    plain = to_plain(cfg)
    validate(plain)
    try:  # construct once on the meta device: unknown/invalid model options fail here, cheaply
        import torch

        with torch.device("meta"):
            build_model(plain["model"])
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model config: {e}") from None
    run_dir = Path(run_dir)
    info = torchrun_info() if under_torchrun() else DistInfo()
    if info.is_main:
        save_path = plain["trainer"].get("save_path")
        ensure_writable(run_dir, "the run directory")
        ensure_writable(Path(save_path) if save_path else run_dir / "checkpoints",
                        "trainer.save_path" if save_path else "the checkpoint folder")
        (run_dir / "config.yaml").write_text(yaml.safe_dump(plain, sort_keys=False))
    corpus = load_corpus(plain["data"].get("path"), plain["data"].get("cache_dir"))  # build the cache once
    split_corpus(corpus, plain["data"]["val_fraction"], plain["model"]["seq_len"])

    dist_cfg = plain["distributed"]
    if under_torchrun():
        return train_worker(info, plain, str(run_dir))
    if dist_cfg["strategy"] == "ddp":
        spawn(train_worker, dist_cfg["nproc_per_node"], (plain, str(run_dir)),
              dist_cfg.get("master_addr", "127.0.0.1"), dist_cfg.get("master_port"))
        return json.loads((run_dir / "metrics.json").read_text())
    return train_worker(info, plain, str(run_dir))


def _record_failure(run_dir: Path, message: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps({"status": "failed", "error": message}, indent=2) + "\n")


def _hydra_entry(cfg: DictConfig) -> float:
    """One Hydra job; returns val bits/byte (what a sweeper such as Optuna minimises), NaN when it failed."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        result = train(cfg, run_dir)
    except LFByteError as e:
        if not under_torchrun() or os.environ.get("RANK") == "0":
            _record_failure(run_dir, str(e))
        print_error(e)
        if multirun:  # one failed job must not end the sweep; the report shows it as failed
            return math.nan
        sys.exit(2)
    except Exception as e:
        if not multirun:
            raise
        _record_failure(run_dir, f"{type(e).__name__}: {e}")
        traceback.print_exc()
        return math.nan
    return float(result.get("val_bpb", math.nan))


def main() -> None:
    """``python -m lfbyte.train [group=choice ...] [key=value ...]``."""
    hydra_cli("train", _hydra_entry, check=validate)


if __name__ == "__main__":
    main()
