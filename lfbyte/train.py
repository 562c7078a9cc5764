"""``python -m lfbyte.train [overrides]``: the Hydra entry point, and ``train(cfg)`` for Python use."""

from __future__ import annotations

import json
import math
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .checkpoint import checkpoint_dir, ensure_writable
from .cli import hydra_cli
from .config import check_output_dir, to_plain, validate
from .data import load_corpus, split_corpus
from .distributed import DistInfo, sharding_problem, spawn, torchrun_info, under_torchrun
from .errors import ConfigError, LFByteError, describe, print_error
from .rundir import claim, claim_sweep, holds_run, record_segment

if TYPE_CHECKING:
    import torch

_CHECKED: set[str] = set()  # configs this process has checked: the CLI checks before Hydra, then train() runs


def check(plain: dict[str, Any]) -> None:
    """Everything about a config alone that can fail, checked before any run directory is touched:
    values, the model's options, peak memory, evaluation-time sampling and the data. Once per config and
    process (``python -m lfbyte.train`` checks in its launcher, then runs the job in the same process)."""
    key = json.dumps(plain, sort_keys=True, default=str)
    if key in _CHECKED:
        return
    _check(plain)
    _CHECKED.add(key)


def check_model(plain: dict[str, Any]) -> torch.nn.Module:
    """The model as a launch checks it: the memory estimate (a forward of one- and two-layer models on the meta
    device) and the whole model built on the meta device; a bad option is one ConfigError line."""
    import torch

    from .model import build_model
    from .resources import check_memory

    try:
        check_memory(plain)
        with torch.device("meta"):  # cheap: no memory is allocated
            return build_model(plain["model"])
    except (ValueError, TypeError, RuntimeError) as e:
        raise ConfigError(f"model config: {str(e).strip().splitlines()[0][:300]}") from None


def _check(plain: dict[str, Any]) -> None:
    from .generate import check_sampling

    validate(plain)
    for key, path in (("trainer.save_path", plain["trainer"].get("save_path")),
                      ("data.cache_dir", plain["data"].get("cache_dir"))):
        if path:
            check_output_dir(path, key)
    model = check_model(plain)
    if plain["distributed"]["strategy"] == "fsdp" and (problem := sharding_problem(model)):
        raise ConfigError(problem)
    t = plain["trainer"]
    if t.get("sample_length"):
        check_sampling(model, t["sample_length"], t.get("sample_prompt") or "")
    corpus = load_corpus(plain["data"].get("path"), plain["data"].get("cache_dir"))  # builds the cache once
    split_corpus(corpus, plain["data"]["val_fraction"], plain["model"]["seq_len"])


def claim_for_launch(plain: dict[str, Any], out_dir: Path, multirun: bool) -> None:
    """In the launching process, before Hydra writes ``.hydra/`` into the run directory."""
    if under_torchrun() and os.environ.get("RANK", "0") != "0":
        return  # rank 0 claims the directory that every rank shares
    (claim_sweep if multirun else claim)(plain, out_dir)


def train(cfg: DictConfig | dict, run_dir: str | Path) -> dict[str, Any]:
    """Check everything, claim the run directory, then train here, on spawned DDP workers, or as a torchrun rank.

    Nothing in ``run_dir`` changes before every check has passed; once training has started, a failure
    leaves ``metrics.json`` with ``status: failed`` and the reason, and the last good checkpoint."""
    from .trainer import train_worker

    plain = to_plain(cfg)
    check(plain)
    run_dir = Path(run_dir)
    info = torchrun_info() if under_torchrun() else DistInfo()
    if info.is_main:
        changes = claim(plain, run_dir)
        ensure_writable(run_dir, "the run directory")
        ensure_writable(checkpoint_dir(plain, run_dir),
                        "trainer.save_path" if plain["trainer"].get("save_path") else "the checkpoint folder")
        (run_dir / "config.yaml").write_text(yaml.safe_dump(plain, sort_keys=False))
        record_segment(run_dir, plain, changes)
    try:
        if under_torchrun():
            return train_worker(info, plain, str(run_dir))
        dist_cfg = plain["distributed"]
        if dist_cfg["strategy"] in ("ddp", "fsdp"):
            spawn(train_worker, dist_cfg["nproc_per_node"], (plain, str(run_dir)),
                  dist_cfg["master_addr"], dist_cfg.get("master_port"))
            return json.loads((run_dir / "metrics.json").read_text())
        return train_worker(info, plain, str(run_dir))
    except BaseException as e:
        if info.is_main and not isinstance(e, KeyboardInterrupt):
            _record_failure(run_dir, e)
        raise


def _record_failure(run_dir: Path, e: BaseException) -> None:
    """``metrics.json`` says this run failed and why, unless the trainer already wrote a fuller record."""
    path = run_dir / "metrics.json"
    try:
        if json.loads(path.read_text()).get("status") == "failed":
            return
    except (OSError, ValueError, AttributeError):
        pass
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"status": "failed", "error": describe(e)}, indent=2) + "\n")
    except OSError:
        pass  # e.g. the disk is full: the error line still says what happened


def _hydra_entry(cfg: DictConfig) -> float:
    """One Hydra job; returns val bits/byte (what a sweeper such as Optuna minimises), NaN when it failed."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        result = train(cfg, run_dir)
    except LFByteError as e:
        if multirun and not holds_run(run_dir):  # a sweep job refused before it started: the report shows why
            _record_failure(run_dir, e)
        print_error(e)
        if multirun:  # one failed job must not end the sweep; the report shows it as failed
            return math.nan
        sys.exit(2)
    except Exception:
        if not multirun:
            raise
        traceback.print_exc()
        return math.nan
    return float(result.get("val_bpb", math.nan))


def main() -> None:
    """``python -m lfbyte.train [group=choice ...] [key=value ...]``."""
    hydra_cli("train", _hydra_entry, check=check, claim=claim_for_launch)


if __name__ == "__main__":
    main()
