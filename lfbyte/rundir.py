"""A run directory is a record: what makes one, claiming one, and what a resume may change.

A directory *holds a run* once training wrote any of :data:`RECORD_FILES` or a checkpoint. Starting a
run there again is refused unless the user says what they mean: ``trainer.resume=auto`` (continue it),
``trainer.overwrite=true`` (move it aside to ``<dir>.replaced-<time>`` and start fresh; nothing is
deleted), or another ``hydra.run.dir``. A resume compares the new config with the checkpoint's: a
different model is refused, and a different data or optimizer setting needs
``trainer.allow_changes=true``; every segment of a run is appended to ``config_history.jsonl``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .checkpoint import checkpoint_candidates, checkpoint_dir, load_checkpoint, resume_latest, saved_config
from .errors import ConfigError, short_repr

RECORD_FILES = ("config.yaml", "config_history.jsonl", "metrics.json", "metrics.jsonl", "samples.jsonl")
HISTORY = "config_history.jsonl"
# Settings a resume may change freely: how the run is watched, stopped, saved and where it runs,
# not how its weights are made. Everything else in the model is refused; the rest needs allow_changes.
FREE_TO_CHANGE = (
    "trainer.resume", "trainer.overwrite", "trainer.allow_changes", "trainer.check_memory", "trainer.progress",
    "trainer.log_interval", "trainer.eval_interval", "trainer.eval_windows", "trainer.eval_scored",
    "trainer.sample_length", "trainer.sample_prompt", "trainer.num_threads", "trainer.device", "trainer.compile",
    "trainer.checkpoint_interval", "trainer.keep_last", "trainer.save_path", "trainer.epochs", "trainer.max_steps",
    "trainer.max_time", "trainer.stop_at_step", "trainer.on_nonfinite", "trainer.max_skipped_steps",
    "trainer.peak_tflops", "data.cache_dir", "distributed.master_addr", "distributed.master_port",
    "distributed.backend", "distributed.strategy", "distributed.reshard_after_forward", "logger",
    "model.mixer_kernel",
)  # (distributed.strategy: ddp and fsdp compute the same update; a different world size is nproc_per_node;
#    model.mixer_kernel: fused or pure-torch kernels compute the same mixing)
# Keys older runs recorded that nothing ever read (removed): a resume of such a run is not a change.
RETIRED_KEYS = ("data.kind", "optimizer.name")
# Keys added since runs were recorded, with the value that builds the model those runs trained: a config without
# one means that value (a resume of such a run, or a comparison with it, is not a change).
ADDED_KEYS = {"model.short_conv": 0, "model.channel_decay": False, "model.delta_rule": False, "model.attn_dropout": None, "trainer.eval_scored": None}
# Model keys that change how the model trains, not what it is (its weights load either way).
MODEL_TRAINING_KEYS = ("model.dropout", "model.attn_dropout", "model.chunk_size", "model.mixer_kernel")
CHOICES = ("trainer.resume=auto to continue it, trainer.overwrite=true to move it aside and start fresh, "
           "or another hydra.run.dir")


def holds_run(run_dir: Path, ckpt_dir: Path | None = None) -> bool:
    run_dir = Path(run_dir)
    if any((run_dir / f).exists() for f in RECORD_FILES):
        return True
    return bool(checkpoint_candidates(ckpt_dir if ckpt_dir is not None else run_dir / "checkpoints"))


def sweep_holds_runs(sweep_dir: Path) -> bool:
    sweep_dir = Path(sweep_dir)
    return sweep_dir.is_dir() and any(p.is_dir() and holds_run(p) for p in sweep_dir.iterdir())


def move_aside(path: Path) -> Path:
    """Rename ``path`` to ``<path>.replaced-<time>`` (never deleted) and return the new name."""
    path = Path(path)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    target = path.with_name(f"{path.name}.replaced-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.replaced-{stamp}-{n}")
    try:
        path.rename(target)
    except OSError as e:
        raise ConfigError(f"trainer.overwrite=true: cannot move {path} aside to {target} ({e.strerror or e}); "
                          "move it yourself or choose another hydra.run.dir") from None
    print(f"moved the previous run in {path} aside to {target}", flush=True)
    return target


def claim(cfg: dict[str, Any], run_dir: Path) -> dict[str, list[Any]]:
    """Make ``run_dir`` ready for ``cfg`` or refuse, changing nothing unless every check passed.

    Returns the settings a resume changes (see :func:`check_resume`); empty for a fresh start."""
    t = cfg["trainer"]
    ckpt_dir = checkpoint_dir(cfg, run_dir)
    if t.get("resume"):
        if t.get("overwrite"):
            raise ConfigError("trainer.resume and trainer.overwrite=true contradict each other; choose one")
        return check_resume(cfg, run_dir)
    if not holds_run(run_dir, ckpt_dir):
        return {}
    if not t.get("overwrite"):
        where = f" (checkpoints in {ckpt_dir})" if Path(run_dir) not in ckpt_dir.parents else ""
        raise ConfigError(f"{run_dir}{where} already holds a run; use {CHOICES}")
    if Path(run_dir).exists():
        move_aside(Path(run_dir))
    if Path(run_dir) not in ckpt_dir.parents and checkpoint_candidates(ckpt_dir):
        move_aside(ckpt_dir)
    return {}


def claim_sweep(cfg: dict[str, Any], sweep_dir: Path) -> None:
    """A sweep into a folder whose jobs already ran: refused unless each job resumes or the sweep moves aside."""
    t = cfg["trainer"]
    if t.get("resume") or not sweep_holds_runs(sweep_dir):
        return
    if not t.get("overwrite"):
        raise ConfigError(f"the sweep folder {sweep_dir} already holds runs; use trainer.resume=auto to continue "
                          "each job, trainer.overwrite=true to move the folder aside, or another hydra.sweep.dir")
    move_aside(Path(sweep_dir))


def _resume_source(cfg: dict[str, Any], run_dir: Path) -> tuple[Path, dict] | None:
    resume = cfg["trainer"]["resume"]
    ckpt_dir = checkpoint_dir(cfg, run_dir)
    if resume == "auto":
        return resume_latest(ckpt_dir, warn=False, weights=False)  # the config is all a check reads
    path = Path(resume)
    ckpt = load_checkpoint(path, weights=False)
    if holds_run(run_dir, ckpt_dir) and ckpt_dir.resolve() != path.resolve().parent:
        raise ConfigError(f"trainer.resume={resume} continues another run's checkpoint, but {run_dir} already "
                          "holds a run; resume it into a new hydra.run.dir")
    return path, ckpt


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[Any]]:
    """``{key: [old, new]}`` for every flattened key whose value differs (``<unset>`` when absent);
    :data:`RETIRED_KEYS` are not compared, and a missing one of :data:`ADDED_KEYS` reads as its old value."""
    a, b = ({**ADDED_KEYS, **{k: v for k, v in _flatten(c).items() if k not in RETIRED_KEYS}} for c in (old, new))
    return {k: [a.get(k, "<unset>"), b.get(k, "<unset>")] for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)
            or (k in a) != (k in b)}


def _free(key: str) -> bool:
    return any(key == f or key.startswith(f + ".") for f in FREE_TO_CHANGE)


def check_resume(cfg: dict[str, Any], run_dir: Path) -> dict[str, list[Any]]:
    """The settings a resume changes; raises when the model differs, or training settings differ without
    ``trainer.allow_changes=true``. A fresh start (``resume=auto`` with no checkpoint yet) changes nothing."""
    found = _resume_source(cfg, run_dir)
    if found is None:
        return {}
    path, ckpt = found
    old = saved_config(ckpt)
    if not isinstance(old, dict):
        return {}  # written before checkpoints kept their config: the state dict check still applies
    changes = config_changes(old, cfg)
    model = {k: v for k, v in changes.items() if k.startswith("model.") and k not in MODEL_TRAINING_KEYS}
    if model:
        raise ConfigError(f"trainer.resume: {path} was trained with a different model ({_describe(model)}); "
                          "resume with the model settings it was trained with, or start a new run")
    training = {k: v for k, v in changes.items() if not k.startswith("model.") or k in MODEL_TRAINING_KEYS}
    guarded = {k: v for k, v in training.items() if not _free(k)}
    if guarded and not cfg["trainer"].get("allow_changes"):
        raise ConfigError(f"trainer.resume: {path} was trained with other settings ({_describe(guarded)}); "
                          "resume with the same ones, or set trainer.allow_changes=true to continue with the new "
                          f"values (recorded in {HISTORY})")
    return training


def _describe(changes: dict[str, list[Any]], limit: int = 4) -> str:
    items = [f"{k}: {short_repr(a, 60)} -> {short_repr(b, 60)}" for k, (a, b) in list(changes.items())[:limit]]
    more = f" and {len(changes) - limit} more" if len(changes) > limit else ""
    return ", ".join(items) + more


def record_segment(run_dir: Path, cfg: dict[str, Any], changes: dict[str, list[Any]]) -> None:
    """Append this start (fresh or resumed) to ``config_history.jsonl``: the full config and what changed."""
    path = Path(run_dir) / HISTORY
    segment = 1
    if path.is_file():
        segment += sum(1 for line in path.read_text(errors="replace").splitlines() if line.strip())
    row = {"segment": segment, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "resume": cfg["trainer"].get("resume"), "changes": changes, "config": cfg}
    with open(path, "a") as f:
        f.write(json.dumps(row, default=str) + "\n")
