"""Metric sinks: JSONL files in the run dir always (rank 0 only), Weights & Biases when ``logger=wandb``.

Local files are the record the report reads (``metrics.jsonl``: one row per log/eval, ``samples.jsonl``:
generated text); W&B mirrors them for watching runs live. In a Hydra multirun, the resolvers registered
here name each W&B run after its job directory and group it under its sweep, so one sweep is one group.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from .errors import ConfigError, LFByteError

WANDB_MODES = ("auto", "online", "offline", "disabled")


def _scalar(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _json_safe(v: Any) -> Any:
    # NaN/inf are not JSON; keep them readable (float("nan") parses them back) instead of writing invalid JSON
    return str(v) if isinstance(v, float) and not math.isfinite(v) else v


class Logger:
    """``log(metrics, step)`` appends a row to ``metrics.jsonl`` and forwards it to W&B when enabled.

    Only the process with ``enabled=True`` (rank 0) writes anything. Call ``finish(exit_code)`` exactly
    once at the end of the job, also on failure, so W&B closes the run and a multirun can start the next.
    """

    def __init__(self, run_dir: str | Path, cfg: dict, full_config: dict, enabled: bool = True) -> None:
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.samples_path = self.run_dir / "samples.jsonl"
        self._samples: dict[str, list[list[Any]]] = {}
        self.wandb_run: Any = None
        if enabled:  # a resumed run appends here: end a row torn by the last run (a full disk) first
            for path in (self.path, self.samples_path):
                _end_torn_line(path)
        if enabled and cfg.get("name", "none") == "wandb":
            self.wandb_run = _init_wandb(self.run_dir, cfg, full_config)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if not self.enabled:
            return
        values = {k: _scalar(v) for k, v in metrics.items()}
        _append_jsonl(self.path, {"step": step, **{k: _json_safe(v) for k, v in values.items()}})
        if self.wandb_run is not None:
            self.wandb_run.log(values, step=step)

    def mark(self, event: str, step: int, **fields: Any) -> None:
        """A row that is not a measurement, e.g. ``{"event": "resume", "step": 20}``: where a resumed run
        continues, so two step sequences in ``metrics.jsonl`` always have a marker between them."""
        if self.enabled:
            _append_jsonl(self.path, {"step": step, "event": event, **fields})

    def log_text(self, key: str, text: str, step: int) -> None:
        """Generated samples: a row in ``samples.jsonl``; in W&B a table of every sample so far under ``key``."""
        if not self.enabled:
            return
        _append_jsonl(self.samples_path, {"step": step, "key": key, "text": text})
        if self.wandb_run is not None:
            import wandb

            rows = self._samples.setdefault(key, [])
            rows.append([step, text])
            self.wandb_run.log({key: wandb.Table(columns=["step", "text"], data=list(rows))}, step=step)

    def finish(self, exit_code: int = 0) -> None:
        """Close the W&B run (non-zero ``exit_code`` marks it failed); safe to call more than once."""
        run, self.wandb_run = self.wandb_run, None
        if run is not None:
            run.finish(exit_code=exit_code)


def _end_torn_line(path: Path) -> None:
    """Terminate a last line left without its newline, so the next row does not fuse with it."""
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    f.write(b"\n")
    except FileNotFoundError:
        pass
    except OSError as e:
        raise LFByteError(f"cannot write {path}: {e.strerror or e}; free disk space, then resume with "
                          "trainer.resume=auto") from None


def _append_jsonl(path: Path, row: dict[str, Any]) -> None:
    try:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
    except OSError as e:  # a full disk mid-run: stop with the reason; the last checkpoint is intact
        raise LFByteError(f"cannot write {path}: {e.strerror or e}; free disk space, then resume with "
                          "trainer.resume=auto") from None


def wandb_has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", "~/.netrc")).expanduser()
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def wandb_mode(requested: str) -> str:
    """``auto``: online when an API key is configured, offline otherwise (``wandb sync`` uploads it later)."""
    if requested not in WANDB_MODES:
        raise ConfigError(f"logger.mode={requested!r} must be one of {list(WANDB_MODES)}")
    if requested == "auto":
        return "online" if wandb_has_api_key() else "offline"
    if requested == "online" and not wandb_has_api_key():
        raise ConfigError("logger.mode=online but no W&B API key is configured: run `wandb login` "
                          "(or set WANDB_API_KEY), or use logger.mode=offline and `wandb sync` later")
    return requested


def _init_wandb(run_dir: Path, cfg: dict, full_config: dict) -> Any:
    mode = wandb_mode(cfg.get("mode", "auto"))
    import wandb

    try:
        return wandb.init(
            project=cfg.get("project") or "lfbyte",
            entity=cfg.get("entity"),
            group=cfg.get("group"),
            job_type=cfg.get("job_type"),
            tags=[str(t) for t in cfg.get("tags") or []],
            name=cfg.get("run_name"),
            notes=cfg.get("notes"),
            mode=mode,
            dir=str(run_dir),  # run files live beside the checkpoints: <run dir>/wandb/<offline-|>run-*/
            config=full_config,
            reinit="finish_previous",  # jobs of a sequential multirun share this process
        )
    except wandb.errors.Error as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LFByteError(f"W&B could not start a run ({first}); use logger.mode=offline or logger=none") from None


def multirun_name(which: str) -> str | None:
    """Resolver ``${lfbyte.multirun:sweep}`` / ``${lfbyte.multirun:job}``: the sweep or job directory name.

    ``None`` outside a Hydra multirun (single runs, the compose API), so W&B falls back to its defaults.
    """
    if which not in ("sweep", "job"):
        raise ConfigError(f"${{lfbyte.multirun:{which}}}: the argument must be 'sweep' or 'job'")
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    sweep, job = Path(hc.sweep.dir).absolute(), Path(hc.runtime.output_dir)
    if which == "sweep":
        return sweep.name
    try:  # the subdir may be nested (an override value holding '/'): name the job by all of it
        return str(job.relative_to(sweep))
    except ValueError:
        return job.name


def register_resolvers() -> None:
    """Idempotent; must run before the config is resolved (``lfbyte.config.to_plain``)."""
    if not OmegaConf.has_resolver("lfbyte.multirun"):
        OmegaConf.register_new_resolver("lfbyte.multirun", multirun_name)


register_resolvers()
