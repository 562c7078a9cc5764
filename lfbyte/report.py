"""``python -m lfbyte.report <multirun dir>``: one table and one plot for a whole sweep.

Reads every job directory (found by its ``.hydra/overrides.yaml``): the overrides that made it, its
final ``metrics.json`` and its ``metrics.jsonl`` curve. Writes ``report.md``, ``report.csv`` and
``report.png`` (into the sweep dir, or ``--out``). A job that failed, or never wrote its final metrics,
is a row with its status and error, never silently missing; a job whose files are unreadable is an
``unknown`` row that names the file.

Jobs that differ only in ``seed`` are one group: a second table gives each group's mean ± std, n, min
and max of the final val bits/byte, names the best group per model (the ``model`` or ``experiment``
override, or ``--per``), and says for each comparison whether the difference exceeds the seed spread
(Welch's t-test). Where a wall-clock budget gave one model's jobs different step counts, a column gives
each group's val bits/byte at the last evaluation every job of that model reached: the settings at equal
steps, without the step-count noise of a shared machine. The plot shows each group's mean curve with a
±1 std band against wall-clock and against training FLOPs (3 × forward FLOPs per byte × bytes seen).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml

from .config import is_int, is_number
from .errors import ConfigError, LFByteError, print_error
from .stats import Summary, summarize, welch

LN2 = math.log(2.0)
NO_METRICS = "no metrics.json: the job is still running or was killed before writing it (see its train.log)"
NOT_STARTED = "no job directory: the sweep stopped before launching it"
NOT_OK = ("failed", "incomplete", "unknown", "not started")


@dataclass
class Job:
    """One Hydra job directory of a sweep, as read from disk."""

    path: Path | None  # None: planned by the sweep but never launched
    num: int | None
    overrides: dict[str, str]
    status: str
    metrics: dict[str, Any]
    curve: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl rows that hold val_bpb
    error: str = ""
    scored: tuple[int, int] | None = None  # which validation bytes val_bpb scores (see scored_bytes)

    @property
    def name(self) -> str:
        return self.path.name if self.path is not None else ""

    @property
    def ok(self) -> bool:
        return self.status not in NOT_OK

    def value(self, key: str) -> float | None:
        v = self.metrics.get(key)
        try:
            v = float(v)
        except (TypeError, ValueError):
            return None
        return v if math.isfinite(v) else None


# ------------------------------------------------------------------ reading
class Unreadable(ValueError):
    """A job file that exists but does not hold what it should (torn write, hand edit, wrong file)."""


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; ``None`` if there is no such file; :class:`Unreadable` if it is not one."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise Unreadable(f"{path.name} is not valid JSON ({_first_line(e)})") from None
    if not isinstance(data, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(data), "a number")
        raise Unreadable(f"{path.name} holds {kind}, not a JSON object")
    return data


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every JSON object line of ``path`` (e.g. metrics.jsonl); a missing file or a damaged line is skipped."""
    rows = []
    if path.is_file():
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return rows
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a torn last line of a killed job
            if isinstance(row, dict):  # anything else is not a metrics row
                rows.append(row)
    return rows


def continued_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Metrics rows as one step sequence: at a ``{"event": "resume", "step": s}`` marker the run went on
    from step ``s``, so rows logged after ``s`` before it (work lost since the last checkpoint) are dropped."""
    out: list[dict[str, Any]] = []
    for row in rows:
        if "event" in row:
            at = row.get("step")
            if is_number(at):
                out = [r for r in out if not is_number(r.get("step")) or r["step"] <= at]
            continue
        out.append(row)
    return out


def _read_yaml(path: Path) -> Any:
    """Parsed YAML; ``None`` if the file is missing; :class:`Unreadable` if it does not parse."""
    if not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text(errors="replace"))
    except (OSError, yaml.YAMLError) as e:
        raise Unreadable(f"{path.name} is not readable YAML ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _parse_overrides(items: list[str]) -> dict[str, str]:
    """``model.embed_dim=128`` / ``+key=v`` / ``~key`` → {key: value}; the key keeps no ``+``/``~`` prefix."""
    out = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.lstrip("+~")
        out[key] = value if sep else "(deleted)"
    return out


def _job_num(job_dir: Path) -> int | None:
    try:
        hydra_cfg = _read_yaml(job_dir / ".hydra" / "hydra.yaml")
    except Unreadable:
        hydra_cfg = None  # the number is also in the folder name
    num = hydra_cfg.get("hydra", {}).get("job", {}).get("num") if isinstance(hydra_cfg, dict) else None
    if not isinstance(num, int):
        head = job_dir.name.split("_", 1)[0]
        num = int(head) if head.isdigit() else None
    return num


def read_job(job_dir: Path) -> Job:
    """One row, never an exception: an unreadable ``metrics.json`` makes the job ``unknown``, and every
    unreadable file is named in its error."""
    num = _job_num(job_dir)
    try:
        items = _read_yaml(job_dir / ".hydra" / "overrides.yaml") or []
        if not isinstance(items, list):
            raise Unreadable("overrides.yaml is not a list of overrides")
        bad_overrides = ""
    except Unreadable as e:  # the row still shows the job's outcome, just not what it swept
        items, bad_overrides = [], str(e)
    overrides = _parse_overrides(items)

    rows = continued_rows(read_jsonl(job_dir / "metrics.jsonl"))
    try:
        final = read_json(job_dir / "metrics.json")
        torn = ""
    except Unreadable as e:  # the outcome is unknown: show the last logged values, and why
        final, torn = None, str(e) + ("; showing the last values in metrics.jsonl" if rows else "")
    if final is None:  # show what it had reached: the last logged values
        metrics: dict[str, Any] = {}
        for row in rows:
            metrics.update(row)
        status, error = ("unknown", torn) if torn else ("incomplete", NO_METRICS)
    else:
        metrics, status, error = final, str(final.get("status", "completed")), str(final.get("error") or "")
    error = "; ".join(e for e in (bad_overrides, error) if e)
    if "parameters" not in metrics:
        metrics["parameters"] = _count_parameters(job_dir)
    curve = [r for r in rows if is_number(r.get("val_bpb"))]  # a null or hand-edited value is not a point
    return Job(job_dir, num, overrides, status, metrics, curve, error, scored_bytes(job_dir))


def scored_bytes(job_dir: Path) -> tuple[int, int] | None:
    """Which validation bytes a job's val_bpb scores: (bytes scored per window, windows); None when its config.yaml
    is unreadable. On one corpus, jobs whose pairs differ were scored on different bytes."""
    try:
        cfg = _read_yaml(job_dir / "config.yaml")
        t, m = cfg.get("trainer"), cfg.get("model")
        scored, windows = (t.get("eval_scored") or m.get("seq_len"), t.get("eval_windows"))
    except (Unreadable, AttributeError):  # no file, or not a mapping of mappings
        return None
    return (scored, windows) if is_int(scored) and is_int(windows) else None


def _count_parameters(job_dir: Path) -> int | None:
    """Jobs that failed before training wrote no parameter count: build the model from its config, on meta."""
    cfg_path = job_dir / "config.yaml"
    if not cfg_path.is_file():
        return None
    try:
        import torch

        from .model import build_model

        with torch.device("meta"):
            return build_model(yaml.safe_load(cfg_path.read_text())["model"]).num_parameters()
    except Exception:  # an invalid model config is often why the job failed
        return None


def _multirun_hydra(sweep_dir: Path) -> dict[str, Any]:
    """The ``hydra:`` section of ``multirun.yaml``; empty when it is missing or unreadable."""
    try:
        data = _read_yaml(sweep_dir / "multirun.yaml")
    except Unreadable:
        return {}
    hydra_cfg = data.get("hydra") if isinstance(data, dict) else None
    return hydra_cfg if isinstance(hydra_cfg, dict) else {}


def planned_jobs(sweep_dir: Path) -> list[list[str]] | None:
    """The overrides of every job Hydra's basic sweeper planned (from ``multirun.yaml``), in launch order.

    Expanded by Hydra's own sweep parser; ``None`` where that is unavailable (another sweeper, no file).
    """
    hydra_cfg = _multirun_hydra(sweep_dir)
    sweeper = hydra_cfg.get("sweeper") or {}
    if not isinstance(sweeper, dict) or not str(sweeper.get("_target_", "")).endswith(".BasicSweeper"):
        return None
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        args = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
        args += [str(a) for a in hydra_cfg.get("overrides", {}).get("task") or []]
        overrides = OverridesParser.create().parse_overrides(args)
        return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]
    except Exception:  # a Hydra version without these internals, or a hand-edited file: report what is on disk
        return None


def find_jobs(sweep_dir: Path) -> list[Job]:
    """Every job directory under ``sweep_dir``, plus a "not started" row per planned job that has none."""
    dirs = sorted({p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")})
    jobs = [read_job(d) for d in dirs]
    seen = {j.num for j in jobs}
    for num, overrides in enumerate(planned_jobs(sweep_dir) or []):
        if num not in seen:
            jobs.append(Job(None, num, _parse_overrides(overrides), "not started", {}, error=NOT_STARTED))
    return sorted(jobs, key=lambda j: (j.num is None, j.num if j.num is not None else 0, str(j.path)))


def swept_keys(jobs: list[Job]) -> tuple[list[str], dict[str, str]]:
    """Keys whose value differs between jobs (table columns), and the overrides every job shares."""
    keys = sorted({k for j in jobs for k in j.overrides})
    swept = [k for k in keys if len({j.overrides.get(k) for j in jobs}) > 1]
    common = {k: jobs[0].overrides[k] for k in keys if k not in swept}
    return swept, common


def sweep_command(sweep_dir: Path) -> str | None:
    """The launching command, rebuilt from the ``multirun.yaml`` Hydra's basic sweeper writes."""
    over = _multirun_hydra(sweep_dir).get("overrides")
    if not isinstance(over, dict):
        return None
    args = [a for a in (*(over.get("hydra") or []), *(over.get("task") or [])) if a != "hydra.mode=MULTIRUN"]
    return "python -m lfbyte.train -m " + " ".join(shlex.quote(str(a)) for a in args)


# ------------------------------------------------------------------ table
COLUMNS = [  # (header, metrics key, markdown format)
    ("parameters", "parameters", "{:,.0f}"),
    ("val bits/byte", "val_bpb", "{:.4f}"),
    ("best val bits/byte", "best_val_bpb", "{:.4f}"),
    ("steps", "step", "{:,.0f}"),
    ("bytes/s", "bytes_per_s", "{:,.0f}"),
    ("time (s)", "elapsed_s", "{:.1f}"),
]


def _with_derived(job: Job) -> dict[str, Any]:
    m = dict(job.metrics)
    best = job.value("best_val_loss")
    if best is not None:
        m["best_val_bpb"] = best / LN2
    return m


def table_rows(jobs: list[Job], swept: list[str]) -> list[dict[str, Any]]:
    rows = []
    for j in jobs:
        m = _with_derived(j)
        row: dict[str, Any] = {"job": j.num, "status": j.status}
        row.update({k: j.overrides.get(k, "") for k in swept})
        for header, key, _ in COLUMNS:
            v = m.get(key)
            row[header] = v if isinstance(v, (int, float)) and not isinstance(v, bool) else None
        row["error"] = j.error
        row["dir"] = j.name
        rows.append(row)
    return rows


def _md_cell(v: Any, fmt: str | None = None) -> str:
    if v is None or v == "":
        return "–"
    if fmt and isinstance(v, (int, float)):
        return fmt.format(v) if math.isfinite(v) else str(v)
    return str(v).replace("|", "\\|").replace("\n", " ")


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_markdown(jobs: list[Job], rows: list[dict[str, Any]], swept: list[str], common: dict[str, str],
                   sweep_dir: Path, plot_name: str | None, path: Path, grouped: list[str] | None = None) -> None:
    ok = [j for j in jobs if j.ok and j.value("val_bpb") is not None]
    lines = [f"# Sweep report: `{sweep_dir.name}`", ""]
    command = sweep_command(sweep_dir)
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    if common:
        lines += ["Shared overrides: " + ", ".join(f"`{k}={v}`" for k, v in common.items()), ""]
    failed = len(jobs) - sum(j.ok for j in jobs)
    lines.append(f"{len(jobs)} jobs: {len(jobs) - failed} finished, {failed} failed, incomplete or not started.")
    if ok:
        best = min(ok, key=lambda j: j.value("val_bpb"))
        # only what this job set: a queue's jobs set different keys, and "key=" for the rest reads as a value
        desc = ", ".join(f"{k}={_fmt_value(best.overrides[k])}" for k in swept if k in best.overrides) or best.name
        # a queue's folders (experiments/run_queue.sh) have no job number: name the folder (found under sweep_dir)
        which = f"job {best.num}" if best.num is not None else f"`{best.path.relative_to(sweep_dir)}`"
        lines.append(f"Best: {which} ({desc}) at {best.value('val_bpb'):.4f} val bits/byte.")
    lines.append("")
    headers = ["job", "status", *swept, *(h for h, _, _ in COLUMNS), "error"]
    fmts = {h: f for h, _, f in COLUMNS}
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "|".join("---:" if h in fmts or h == "job" else "---" for h in headers) + "|")
    for row in rows:
        cells = [_md_cell(_fmt_value(str(row[h])) if h in swept else row[h], fmts.get(h)) for h in headers]
        lines.append("| " + " | ".join(cells) + " |")
    if grouped:
        lines += ["", *grouped]
    if plot_name:
        lines += ["", f"![val bits/byte]({plot_name})"]
    path.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------ seeds
SEED_KEY = "seed"
ALPHA = 0.05  # a difference "exceeds the seed spread" when Welch's two-sided p is below this


@dataclass
class Group:
    """The jobs of one setting: they differ only in their seed."""

    settings: dict[str, str]  # the swept overrides other than the seed
    jobs: list[Job]

    @property
    def finished(self) -> list[Job]:
        return [j for j in self.jobs if j.ok and j.value("val_bpb") is not None]

    @property
    def values(self) -> list[float]:
        return [v for j in self.finished if (v := j.value("val_bpb")) is not None]

    def summary(self) -> Summary | None:
        return summarize(self.values) if self.values else None

    def setting(self, key: str | None) -> str:
        """This group's value of override ``key`` (e.g. the one naming its model); "" for no key or not set."""
        return self.settings.get(key, "") if key else ""

    def at_step(self, step: int) -> list[float]:
        """Each finished seed's val bits/byte at evaluation ``step`` (seeds without one are left out)."""
        return [float(r["val_bpb"]) for j in self.finished for r in j.curve if r.get("step") == step]

    def mean_of(self, key: str) -> float | None:
        vals = [v for j in self.finished if (v := _with_derived(j).get(key)) is not None and is_number(v)]
        return sum(vals) / len(vals) if vals else None

    def label(self, keys: list[str] | None = None, empty: str = "all jobs") -> str:
        keys = list(self.settings) if keys is None else keys
        # a key this group's jobs did not set ("" in settings) is left out, not printed as "key="
        return " ".join(f"{_short(k)}={_fmt_value(self.settings[k])}" for k in keys if self.settings[k] != "") or empty


def group_by_seed(jobs: list[Job], swept: list[str]) -> list[Group]:
    """One group per setting of the swept keys other than ``seed``, in the order of their first job."""
    keys = [k for k in swept if k != SEED_KEY]
    groups: dict[tuple[str, ...], Group] = {}
    for j in jobs:
        settings = {k: j.overrides.get(k, "") for k in keys}
        groups.setdefault(tuple(settings.values()), Group(settings, [])).jobs.append(j)
    return list(groups.values())


def per_key(swept: list[str], per: str | None) -> str | None:
    """The override that names the model of a job: ``--per``, else ``model`` or ``experiment`` when swept."""
    if per is not None:
        return per
    return next((k for k in ("model", "experiment") if k in swept), None)


def best_per(groups: list[Group], key: str | None) -> dict[str, Group]:
    """The group with the lowest mean final val bits/byte for each value of ``key`` (one entry without a key)."""
    best: dict[str, Group] = {}
    for g in groups:
        s = g.summary()
        if s is None:
            continue
        name = g.setting(key)
        if name not in best or s.mean < best[name].summary().mean:  # type: ignore[union-attr]
            best[name] = g
    return best


def equal_steps(groups: list[Group], key: str | None) -> dict[str, int]:
    """Per model (value of ``key``): the last evaluation step every finished job of that model reached — only for
    models whose jobs ended at different steps (a wall-clock budget) and all logged a curve."""
    evals: dict[str, list[set[int]]] = {}
    ends: dict[str, set[Any]] = {}
    for g in groups:
        name = g.setting(key)
        for j in g.finished:
            evals.setdefault(name, []).append({r["step"] for r in j.curve if is_int(r.get("step"))})
            ends.setdefault(name, set()).add(j.metrics.get("step"))
    out = {}
    for name, steps in evals.items():
        common = set.intersection(*steps)
        if len(ends[name]) > 1 and common:
            out[name] = max(common)
    return out


@dataclass
class Comparison:
    a: Group
    b: Group
    why: str  # what this pair is: "best per model", "best vs runner-up", "vs <baseline>"

    def line(self, keys: list[str]) -> list[str]:
        sa, sb = self.a.summary(), self.b.summary()
        assert sa is not None and sb is not None
        test = welch(self.a.values, self.b.values)
        if test is None:
            verdict, t, df, p = f"n/a: needs ≥ 2 seeds each (n={sa.n} vs {sb.n})", "–", "–", "–"
        else:
            beyond = test.p < ALPHA
            verdict = "**beyond the seed spread**" if beyond else "within the seed noise"
            t, df, p = f"{test.t:.2f}", f"{test.df:.1f}", f"{test.p:.3g}"
        blocks = {j.scored for j in self.a.finished + self.b.finished if j.scored is not None}
        if len(blocks) > 1:  # e.g. seq_len 64 vs 128: the trainer scored each on its own windows
            verdict += (" — ⚠ not the same validation bytes (bytes scored per window, windows: "
                        f"{' vs '.join(map(str, sorted(blocks)))}): train both with one trainer.eval_scored")
        return [self.why, self.a.label(keys), self.b.label(keys), f"{sa.mean - sb.mean:+.4f}",
                f"{sa.mean / sb.mean:.3f}×", t, df, p, verdict]


def comparisons(groups: list[Group], key: str | None, vs: dict[str, str] | None) -> list[Comparison]:
    """The pairs worth a test: the best group of each model against each other, each model's best against
    its runner-up (is the tuning's winner distinguishable?), and every group against ``vs`` when given."""
    out: list[Comparison] = []
    best = best_per(groups, key)
    names = list(best)
    for i, x in enumerate(names):
        for y in names[i + 1:]:
            a, b = sorted((best[x], best[y]), key=lambda g: g.summary().mean)  # type: ignore[union-attr]
            out.append(Comparison(a, b, f"best per {_short(key or 'model')}"))
    for name, top in best.items():
        rivals = [g for g in groups if g is not top and g.summary() is not None
                  and g.setting(key) == name]
        if rivals:
            runner = min(rivals, key=lambda g: g.summary().mean)  # type: ignore[union-attr]
            out.append(Comparison(top, runner, "best vs runner-up"))
    if vs:
        base = [g for g in groups if all(g.settings.get(k) == v for k, v in vs.items())]
        if not base:
            raise ConfigError(f"--vs {','.join(f'{k}={v}' for k, v in vs.items())} matches no group of this sweep; "
                             f"groups: {[g.label() for g in groups]}")
        if base[0].summary() is not None:
            for g in groups:
                if g is not base[0] and g.summary() is not None:
                    out.append(Comparison(g, base[0], "vs " + base[0].label(list(vs))))
    return out


GROUP_COLUMNS = [  # (header, metrics key, format): means over a group's finished seeds
    ("steps", "step", "{:,.0f}"),
    ("bytes/s", "bytes_per_s", "{:,.0f}"),
    ("train TFLOP", "train_flops", "{:.2f}"),
    ("time (s)", "elapsed_s", "{:.1f}"),
]


def group_rows(groups: list[Group], per: str | None = None) -> list[dict[str, Any]]:
    at = equal_steps(groups, per)
    rows = []
    for g in groups:
        s = g.summary()
        row: dict[str, Any] = dict(g.settings)
        row.update({"seeds": ",".join(j.overrides.get(SEED_KEY, "") for j in g.finished), "n": s.n if s else 0,
                    "failed": len(g.jobs) - len(g.finished), "mean": s.mean if s else None,
                    "std": s.std if s else None, "min": s.min if s else None, "max": s.max if s else None})
        for header, metric, _ in GROUP_COLUMNS:
            v = g.mean_of(metric)
            row[header] = v / 1e12 if v is not None and metric == "train_flops" else v
        if at:  # columns only where some model's jobs ended at different steps
            step = at.get(g.setting(per))
            e = summarize(vals) if step is not None and (vals := g.at_step(step)) else None
            row.update({"equal_step": step, "equal_step_n": e.n if e else None,
                        "equal_step_mean": e.mean if e else None, "equal_step_std": e.std if e else None})
        rows.append(row)
    return rows


def group_markdown(groups: list[Group], rows: list[dict[str, Any]], key: str | None,
                   vs: dict[str, str] | None) -> list[str]:
    """The "Seeds grouped" section; ``rows``: ``group_rows(groups, key)``, one per group."""
    keys = list(groups[0].settings)
    equal = "equal_step" in rows[0]
    lines = ["## Seeds grouped", "", "Final val bits/byte over the seeds of each setting (std: sample, n − 1)."
             + (" *At equal steps*: val bits/byte at the last evaluation step every job of the model reached, since"
                " the budget gave its jobs different step counts." if equal else ""), ""]
    headers = [*keys, "n", "val bits/byte mean ± std", "min", "max", *(["at equal steps"] if equal else []),
               *(h for h, _, _ in GROUP_COLUMNS)]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "|".join("---" if h in keys else "---:" for h in headers) + "|")
    for g, row in zip(groups, rows, strict=True):
        s = g.summary()
        stat = f"{s.mean:.4f} ± {s.std:.4f}" if s else "–"
        n = f"{row['n']}" + (f" (+{row['failed']} failed)" if row["failed"] else "")
        cells = [_md_cell(_fmt_value(g.settings[k])) for k in keys] + [n, stat, _md_cell(row["min"], "{:.4f}"),
                                                                     _md_cell(row["max"], "{:.4f}")]
        if equal:
            cells.append("–" if row["equal_step_mean"] is None else
                         f"{row['equal_step_mean']:.4f} ± {row['equal_step_std']:.4f} (step {row['equal_step']:,})")
        cells += [_md_cell(row[h], f) for h, _, f in GROUP_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for name, g in best_per(groups, key).items():
        s = g.summary()
        assert s is not None
        who = f"Best for {key}={name}" if key else "Best overall"
        shown = [k for k in keys if k != key]
        setting = f"{label} — " if (label := g.label(shown, empty="")) else ""
        lines.append(f"{who}: {setting}{s.mean:.4f} ± {s.std:.4f} val bits/byte (n={s.n}).")
    pairs = comparisons(groups, key, vs)
    if pairs:
        lines += ["", f"Differences (Welch's t-test on final val bits/byte; two-sided, α = {ALPHA}):", "",
                  "| pair | A | B | A − B | A / B | t | df | p | verdict |", "|---|---|---|---:|---:|---:|---:|---:|---|"]
        lines += ["| " + " | ".join(_md_cell(c) for c in pair.line(keys)) + " |" for pair in pairs]
    return lines


# ------------------------------------------------------------------- plot
def _fmt_value(v: str) -> str:
    """Override values as written, but long floats (Optuna's) to 4 significant digits."""
    try:
        f = float(v)
    except ValueError:
        return v
    return v if len(v) <= 8 or f.is_integer() else f"{f:.4g}"


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _label(job: Job, keys: list[str]) -> str:
    return " ".join(f"{_short(k)}={_fmt_value(job.overrides[k])}" for k in keys if k in job.overrides) or job.name


MAX_CURVES = 12  # more lines than this are unreadable: the best groups by mean are drawn


def _mean_curve(jobs: list[Job], x_key: str) -> tuple[list[float], list[float], list[float]] | None:
    """Each seed's val curve interpolated on a common x grid (where every seed has points): x, mean, std."""
    import numpy as np

    curves = []
    for j in jobs:
        pts = sorted((float(r[x_key]), float(r["val_bpb"])) for r in j.curve if is_number(r.get(x_key)))
        if pts:
            curves.append(np.array(pts))
    if not curves:
        return None
    lo, hi = max(c[0, 0] for c in curves), min(c[-1, 0] for c in curves)
    if len(curves) == 1 or hi <= lo:  # one seed, or seeds with no common span: the first seed alone
        c = curves[0]
        return list(c[:, 0]), list(c[:, 1]), [0.0] * len(c)
    grid = np.linspace(lo, hi, 60)
    ys = np.stack([np.interp(grid, c[:, 0], c[:, 1]) for c in curves])
    return list(grid), list(ys.mean(0)), list(ys.std(0, ddof=1))


def write_plot(groups: list[Group], by: str | None, x_key: str, title: str, path: Path,
               per: str | None = None) -> None:
    """Val bits/byte of each group's mean curve (±1 std band over seeds) against wall-clock and against
    training FLOPs; right: final val bits/byte (mean ± std) against ``x_key``, one line per value of ``by``.
    With many settings, the best of each model (``per``) share the curve panels equally."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = sorted((g for g in groups if g.summary() is not None), key=lambda g: g.summary().mean)  # type: ignore[union-attr]
    models = list(dict.fromkeys(g.setting(per) for g in done))
    quota = max(1, MAX_CURVES // max(1, len(models)))
    shown = [g for m in models for g in [g for g in done if g.setting(per) == m][:quota]]
    fig, (ax_t, ax_f, ax_p) = plt.subplots(1, 3, figsize=(19, 5.5))
    for g in shown:
        label = g.label() + (f" (n={len(g.finished)})" if len(g.finished) > 1 else "")
        for ax, key in ((ax_t, "elapsed_s"), (ax_f, "train_flops")):
            curve = _mean_curve(g.finished, key)
            if curve is None:
                continue
            xs, mean, std = curve
            line, = ax.plot(xs, mean, label=label, lw=1.4)
            ax.fill_between(xs, [m - s for m, s in zip(mean, std, strict=True)],
                            [m + s for m, s in zip(mean, std, strict=True)], color=line.get_color(), alpha=0.2)
    more = f" (best {quota} per {_short(per or 'model')}, of {len(done)})" if len(done) > len(shown) else ""
    ax_t.set(xlabel="training time (s)", ylabel="val bits/byte", title="equal time: mean ± std over seeds" + more)
    ax_f.set(xlabel="training FLOPs (3 × forward FLOPs/byte × bytes)", ylabel="val bits/byte",
             title="equal compute" + more)
    ax_f.set_xscale("log")
    for ax in (ax_t, ax_f):
        if ax.lines:  # a legend with no lines is a matplotlib warning on stderr
            ax.legend(fontsize=6)

    lines: dict[str, list[Group]] = {}
    for g in done:
        lines.setdefault(g.setting(by), []).append(g)
    for value, members in lines.items():
        pts = sorted((x, s.mean, s.std) for g in members
                     if (x := g.mean_of(x_key)) is not None and (s := g.summary()) is not None)
        if pts:
            xs, ys, es = zip(*pts, strict=True)
            ax_p.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=f"{_short(by)}={value}" if by else "jobs")
    if x_key in ("parameters", "train_flops", "optimizer.lr"):
        ax_p.set_xscale("log")
    ax_p.set(xlabel=x_key.replace("_", " "), ylabel="final val bits/byte (mean ± std)",
             title=f"final val bits/byte vs {x_key}")
    if ax_p.lines:
        ax_p.legend(fontsize=8)
    jobs = [j for g in groups for j in g.jobs]
    ok = sum(j.ok for j in jobs)
    fig.suptitle(f"{title}: {ok} jobs in {len(done)} settings"
                 + (f", {len(jobs) - ok} not completed (not plotted)" if len(jobs) > ok else ""))
    for ax in (ax_t, ax_f, ax_p):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ entry
def report(sweep_dir: str | Path, out_dir: str | Path | None = None, by: str | None = None,
           x_key: str = "parameters", plot: bool = True, per: str | None = None,
           vs: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Write report.md / report.csv (+ report_groups.csv) / report.png for ``sweep_dir``; return the job rows.

    ``per``: the override naming each job's model (default ``model`` or ``experiment`` when swept);
    ``vs``: a setting (``{"ablation": "none"}``) that every other group is tested against.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ConfigError(f"{sweep_dir} is not a directory; pass a multirun dir such as outputs/multirun/<time>")
    jobs = find_jobs(sweep_dir)
    if not jobs:
        raise ConfigError(f"no Hydra job directories (with .hydra/overrides.yaml) under {sweep_dir}; "
                                "pass a multirun dir such as outputs/multirun/<time>")
    out = Path(out_dir) if out_dir else sweep_dir
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a folder to write report.md, report.csv and report.png into")
    swept, common = swept_keys(jobs)
    settings = [k for k in swept if k != SEED_KEY]
    if by is None and settings:  # the swept key with fewest values gives the fewest, longest lines
        by = min(settings, key=lambda k: (len({j.overrides.get(k) for j in jobs}), k))
    if by is not None and by not in swept and by not in common:
        raise ConfigError(f"--by {by!r} is not an override of this sweep; choose from {swept or sorted(common)}")
    per = per_key(swept, per)
    if per is not None and per not in settings:
        raise ConfigError(f"--per {per!r} is not a swept override of this sweep; choose from {settings}")
    for key in vs or {}:
        if key not in settings:
            raise ConfigError(f"--vs {key}=... is not a swept override of this sweep; choose from {settings}")
    groups = group_by_seed(jobs, swept)
    group_table = group_rows(groups, per)
    grouped = group_markdown(groups, group_table, per, vs) if SEED_KEY in swept or vs else None
    out.mkdir(parents=True, exist_ok=True)
    rows = table_rows(jobs, swept)
    write_csv(rows, out / "report.csv")
    if grouped:
        write_csv(group_table, out / "report_groups.csv")
    if plot:
        write_plot(groups, by, x_key, sweep_dir.resolve().name, out / "report.png", per)
    write_markdown(jobs, rows, swept, common, sweep_dir, "report.png" if plot else None, out / "report.md", grouped)
    return rows


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one ``error:`` line (not usage + error), like the other entry points."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message}; see {self.prog} --help", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m lfbyte.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="a multirun directory, e.g. outputs/multirun/2026-01-01_12-00-00")
    parser.add_argument("--out", help="where to write report.{md,csv,png} (default: the sweep dir)")
    parser.add_argument("--by", help="override whose values get one line each in the plot (default: the swept "
                                     "key with fewest values)")
    parser.add_argument("--x", dest="x_key", default="parameters",
                        choices=["parameters", "elapsed_s", "bytes_per_s", "train_flops"],
                        help="x axis of the final-value plot")
    parser.add_argument("--per", help="override that names each job's model, for 'best per model' "
                                      "(default: model or experiment, when swept)")
    parser.add_argument("--vs", help="KEY=VALUE of a setting every other setting is tested against "
                                     "(e.g. ablation=none)")
    parser.add_argument("--no-plot", action="store_true", help="write only the table")
    args = parser.parse_args(argv)
    key, sep, value = (args.vs or "").partition("=")
    try:
        if args.vs is not None and not (key and sep):
            raise ConfigError(f"--vs {args.vs!r} must be KEY=VALUE, e.g. --vs ablation=none")
        try:
            rows = report(args.sweep_dir, args.out, args.by, args.x_key, plot=not args.no_plot, per=args.per,
                          vs={key: value} if args.vs else None)
        except OSError as e:  # the OS refused a write, e.g. a read-only folder
            raise ConfigError(f"cannot write the report to {args.out or args.sweep_dir}: {e.strerror or e}; "
                              "pass --out <a writable folder>") from None
    except LFByteError as e:  # the contract of every entry point (lfbyte.cli): one error line, exit code 2
        print_error(e)
        return 2
    out = Path(args.out or args.sweep_dir)
    bad = sum(r["status"] in NOT_OK for r in rows)
    print((out / "report.md").read_text(), end="")
    print(f"\nwrote {out / 'report.md'}, {out / 'report.csv'}" + ("" if args.no_plot else f", {out / 'report.png'}")
          + f" ({len(rows)} jobs, {bad} not completed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
