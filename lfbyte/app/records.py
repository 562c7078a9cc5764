"""The runs the app shows: the Run menu, each run's record on disk, its learning curves and the panel.

A run is named by its path relative to ``runs_root`` (an absolute path only for a ``run_dir`` outside it).
Its record is read without loading the model: ``config.yaml``, ``metrics.json`` (final), ``metrics.jsonl``
(the curve, read as :mod:`lfbyte.report` reads it) and ``config_history.jsonl`` (when each segment started).
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import is_number
from ..report import Unreadable, continued_rows, read_json, read_jsonl
from ..rundir import HISTORY, config_changes
from ..runs import Run, find_runs, load_run

ARCH_NAMES = {"lfbyte": "LFByteTransformer", "gpt": "GPT"}
LN2 = math.log(2.0)
MAX_DIFF_ROWS = 40
# series -> colour: each run's validation curve dark, its (noisier) training curve light
COLORS = {"A val": "#1f4e9c", "A train": "#9db9e6", "B val": "#c0392b", "B train": "#f1a99f"}


class RunCache:
    """Loaded runs by directory, the ``size`` most recently used kept in memory; thread-safe."""

    def __init__(self, checkpoint: str, device: str | None, size: int = 2) -> None:
        self.checkpoint, self.device, self.size = checkpoint, device, max(1, size)
        self._runs: OrderedDict[str, Run] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, run_dir: str) -> Run:
        with self._lock:
            if run_dir in self._runs:
                self._runs.move_to_end(run_dir)
                return self._runs[run_dir]
            run = load_run(run_dir, self.checkpoint, self.device)
            self._runs[run_dir] = run
            while len(self._runs) > self.size:
                self._runs.popitem(last=False)
            return run


def fmt(value: Any) -> str:
    """A config or metric value for people: 2.6666666666666665 is 2.66667, None is null."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, float):
        return f"{value:.1f}" if value.is_integer() and abs(value) < 1e6 else f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return str(value)


def model_name(config: dict[str, Any] | None) -> str:
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict):
        return "unknown model"
    arch = model.get("arch", "lfbyte")  # as lfbyte.model.build_model reads it
    return ARCH_NAMES.get(arch, str(arch))


# ------------------------------------------------------------------------------ a run's record


@dataclass
class Record:
    """What a run directory says about its training (every file optional; unreadable ones named in ``problems``)."""

    run_dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    final: dict[str, Any] = field(default_factory=dict)  # metrics.json; empty while running or after a kill
    rows: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl as one step sequence
    started: str = ""
    segments: int = 0  # starts recorded in config_history.jsonl (2 or more: resumed)
    problems: list[str] = field(default_factory=list)

    def last(self, key: str) -> Any:
        """``key`` from metrics.json, else its last value in metrics.jsonl."""
        if is_number(self.final.get(key)) or isinstance(self.final.get(key), str):
            return self.final[key]
        return next((r[key] for r in reversed(self.rows) if key in r), None)

    @property
    def val_bpb(self) -> float | None:
        v = self.last("val_bpb")
        return float(v) if is_number(v) else None


def read_record(run_dir: str | Path, config: dict[str, Any] | None = None) -> Record:
    """The record of ``run_dir``; ``config``: the run's config when already loaded."""
    rec = Record(Path(run_dir))
    if config is None:
        try:
            loaded = yaml.safe_load((rec.run_dir / "config.yaml").read_text(errors="replace"))
            config = loaded if isinstance(loaded, dict) else {}
        except (OSError, yaml.YAMLError):
            config = {}
            rec.problems.append("config.yaml is missing or unreadable")
    rec.config = config
    try:
        rec.final = read_json(rec.run_dir / "metrics.json") or {}
    except Unreadable as e:
        rec.problems.append(str(e))
    rec.rows = continued_rows(read_jsonl(rec.run_dir / "metrics.jsonl"))
    history = read_jsonl(rec.run_dir / HISTORY)
    rec.segments = len(history)
    if history and isinstance(history[0].get("started"), str):
        rec.started = history[0]["started"].replace("T", " ")
    elif (rec.run_dir / "config.yaml").is_file():  # runs from before config_history.jsonl
        mtime = (rec.run_dir / "config.yaml").stat().st_mtime
        rec.started = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(mtime)) + " (config.yaml written)"
    return rec


def curve_rows(rec: Record, name: str) -> list[dict[str, Any]]:
    """Plot rows of a run: validation bits/byte of every eval row, training bits/byte (``train_loss``, in
    nats, over ln 2) of every log row; ``seconds`` is training wall-clock (``elapsed_s``), None if not logged."""
    out = []
    for r in rec.rows:
        if not is_number(r.get("step")):
            continue
        for key, split, scale in (("val_bpb", "val", 1.0), ("train_loss", "train", 1 / LN2)):
            if is_number(r.get(key)):  # "nan" (written for a non-finite value) is not a point
                out.append({"step": r["step"], "seconds": r["elapsed_s"] if is_number(r.get("elapsed_s")) else None,
                            "bits_per_byte": float(r[key]) * scale, "series": f"{name} {split}"})
    return out


def curves(records: list[tuple[str, Record]]) -> tuple[Any, Any]:
    """The two plots' data: bits/byte against step, and against wall-clock (rows that logged it)."""
    import pandas as pd

    columns = ["step", "seconds", "bits_per_byte", "series"]
    frame = pd.DataFrame([row for name, rec in records for row in curve_rows(rec, name)], columns=columns)
    # One empty row per series, always: Gradio's plot takes its colour domain from the first data it draws,
    # and a series that appears later (run B) would get no colour; an empty row is not drawn.
    empty = pd.DataFrame([{"step": None, "seconds": None, "bits_per_byte": None, "series": s} for s in COLORS],
                         columns=columns).astype({"step": float, "seconds": float, "bits_per_byte": float})
    return (pd.concat([frame, empty], ignore_index=True),
            pd.concat([frame[frame["seconds"].notna()], empty], ignore_index=True))


# ------------------------------------------------------------------------------ the Run menu


@dataclass
class Entry:
    value: str  # what the menu sends: the run's name (see run_name)
    path: str  # what the cache loads
    label: str


def run_name(path: str | Path, root: str | Path) -> str:
    """A run's name in the app: its path relative to ``root``, or its absolute path when outside it."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(resolved)


def run_paths(root: str | Path, start: str, menu: bool = True) -> dict[str, str]:
    """{name: path} of the runs under ``root``, newest first, with ``start`` (the run served first) under
    its own spelling so the cache loads it once (first if it is not under ``root``); ``menu=False``: ``start`` only."""
    root = Path(root)
    paths = {run_name(p, root): str(p) for p in find_runs(root)} if menu and root.is_dir() else {}
    name = run_name(start, root)
    if name in paths:
        paths[name] = start
        return paths
    return {name: start, **paths}


def _natural(text: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _sweep_of(run: Path, root: Path) -> Path | None:
    """The Hydra multirun folder above ``run`` (the one holding ``multirun.yaml``), up to ``root``."""
    for folder in run.parents:
        if (folder / "multirun.yaml").is_file():
            return folder
        if folder == root:
            return None
    return None


def _label(name: str, run_dir: Path) -> str:
    rec = Record(run_dir)
    try:
        loaded = yaml.safe_load((run_dir / "config.yaml").read_text(errors="replace"))
        rec.config = loaded if isinstance(loaded, dict) else {}
        rec.final = read_json(run_dir / "metrics.json") or {}
    except (OSError, yaml.YAMLError, Unreadable):
        pass
    if "val_bpb" not in rec.final:  # still running, or killed: its last eval
        rec.rows = read_jsonl(run_dir / "metrics.jsonl")
    bpb = rec.val_bpb
    status = rec.final.get("status")
    return f"{name} — " + " · ".join(filter(None, [
        model_name(rec.config),
        f"{bpb:.3f} bits/byte" if bpb is not None else "no eval yet",
        str(status) if status not in (None, "completed") else "",
    ]))


def menu_entries(root: str | Path, start: str, menu: bool = True) -> list[Entry]:
    """The Run menu: the runs under ``root`` newest first, the jobs of a Hydra sweep together (in job order)
    where its newest job falls, each labelled with its model and val bits/byte; ``start`` always listed."""
    groups: dict[str, list[Entry]] = {}  # in order of each group's newest run
    paths = run_paths(root, start, menu)
    root = Path(root).resolve()
    for name, path in paths.items():
        run = Path(path).resolve()
        sweep = _sweep_of(run, root) if root in run.parents else None
        if sweep is None:
            where = f"{name} (outside {root})" if Path(name).is_absolute() else name
            groups[name] = [Entry(name, path, _label(where, run))]
        else:
            s, job = run_name(sweep, root), run.relative_to(sweep).as_posix()
            groups.setdefault(f"sweep {s}", []).append(Entry(name, path, _label(f"{s} ▸ {job}", run)))
    return [e for group in groups.values() for e in sorted(group, key=lambda e: _natural(e.value))]


# ------------------------------------------------------------------------------ the panel


def _facts(name: str, value: str, run: Run, rec: Record) -> dict[str, str]:
    cfg = run.config
    bpb = run.metrics.get("val_bpb")
    status = rec.final.get("status")
    step = rec.last("step")
    if status:
        state = f"{status} at step {fmt(step)}" + (f": {rec.final['error']}" if rec.final.get("error") else "")
    elif step is not None:
        state = f"no metrics.json (running, or stopped before the end); last logged step {fmt(step)}"
    else:
        state = "no metrics.json or metrics.jsonl in the run directory"
    data = (cfg.get("data") or {}).get("path") if isinstance(cfg.get("data"), dict) else None
    elapsed, bps = rec.last("elapsed_s"), rec.last("bytes_per_s")
    dist = cfg.get("distributed") if isinstance(cfg.get("distributed"), dict) else {}
    world = rec.final.get("world_size")
    started = rec.started or "n/a"
    if rec.segments > 1:
        started += f" (resumed {rec.segments - 1}×)"
    return {
        "run": f"`{value}`",
        "path": f"`{run.run_dir}`",
        "model": f"{model_name(cfg)}, {run.model.num_parameters():,} parameters",
        "checkpoint": f"`{run.checkpoint.name}`, step {fmt(run.step)}",
        "validation bits/byte": f"**{bpb:.3f}**" if is_number(bpb) else "n/a",
        "training": state,
        "data": f"`{data}`" if data else "the embedded default corpus",
        "started": started,
        "wall-clock": f"{float(elapsed):,.1f} s" if is_number(elapsed) else "n/a",
        "training bytes/s": f"{float(bps):,.0f}" if is_number(bps) else "n/a",
        "precision": fmt(rec.final.get("precision") or (cfg.get("trainer") or {}).get("precision", "n/a")),
        "world size": fmt(world) if world is not None else "n/a",
        "distributed": fmt(dist.get("strategy", "none")),
        "served on": str(run.device),
        "files": "; ".join(rec.problems) or "ok",
    }


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cell(c) for c in row) + " |" for row in rows)]


def panel(runs: list[tuple[str, str, Run, Record]], note: str = "") -> str:
    """Markdown: the runs (``(pane, menu value, run, record)``) side by side, what differs in their
    configs, and their model configs."""
    names = [name for name, *_ in runs]
    facts = [_facts(*r) for r in runs]
    lines = [f"**Runs** {' · '.join(f'{n}: `{v}`' for n, v, *_ in runs)}{note}", ""]
    lines += _table(["", *names], [[k, *(f[k] for f in facts)] for k in facts[0]])
    if len(runs) == 2:
        changes = config_changes(runs[0][2].config, runs[1][2].config)
        lines += ["", f"**Config differences** ({len(changes)})", ""]
        if changes:
            shown = list(changes.items())[:MAX_DIFF_ROWS]
            unset = "<unset>"  # config_changes' word for a key one config lacks
            lines += _table(["key", *names], [[f"`{k}`", *("—" if v == unset else fmt(v) for v in (a, b))]
                                              for k, (a, b) in shown])
            if len(changes) > MAX_DIFF_ROWS:
                lines.append(f"\nand {len(changes) - MAX_DIFF_ROWS} more")
        else:
            lines.append("none: the same config")
    models = [r[2].config.get("model", {}) for r in runs]
    keys = list(dict.fromkeys(k for m in models for k in m))
    lines += ["", "**Model config**", ""]
    rows = []
    for k in keys:
        values = [fmt(m.get(k, "—")) for m in models]
        differs = len(set(values)) > 1
        rows.append([f"**{k}**" if differs else k, *(f"**{v}**" if differs else v for v in values)])
    lines += _table(["key", *names], rows)
    return "\n".join(lines)
