"""Experiment tooling: multirun sweeps, W&B offline logging read back from its own files, sweep reports."""

from __future__ import annotations

import csv
import json
import math
import shutil
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lfbyte.cli import check_overrides
from lfbyte.config import CONF_DIR, to_plain, validate
from lfbyte.logger import Logger
from lfbyte.report import main as report_main
from lfbyte.report import report
from lfbyte.train import check_model, train

from .conftest import OPTUNA, REPO, compose_cfg, needs_plugin, run_cli, tiny_overrides

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------- W&B reader
def _wandb_records(path: Path) -> Iterator[Any]:
    """Records of a ``run-*.wandb`` file, decoded with wandb's own protobuf schema.

    wandb 0.31 has no Python reader for its transaction log any more; the format is LevelDB's log
    (32 KiB blocks of ``crc32 | length | type | data`` chunks) after a 7-byte ``:W&B`` header.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1), f"{path} is not a W&B run file"
    pos, pending, block = 7, b"", 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer too small for a header: zero padding
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == crc, f"corrupt record in {path}"
        pending = chunk if kind in (1, 2) else pending + chunk  # FULL/FIRST start, MIDDLE/LAST continue
        if kind in (1, 4):  # FULL or LAST: a whole Record
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def read_wandb_run(run_dir: Path) -> dict[str, Any]:
    """The one offline W&B run under ``run_dir``: run metadata, config, history rows and exit code."""
    files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, f"expected one offline W&B run under {run_dir}, found {files}"
    # wandb-core writes the log from its own process: finish() can return before the records reach the
    # file (seen: 1 run in ~10 held only the 7-byte header). A complete log ends with the exit record.
    deadline = time.monotonic() + 30
    while True:
        out = _read_wandb_log(files[0])
        if out["exit_code"] is not None or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def _read_wandb_log(path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"config": {}, "history": [], "exit_code": None, "files": path.parent / "files"}
    for rec in _wandb_records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["run"] = rec.run
            out["config"].update({u.key: json.loads(u.value_json) for u in rec.run.config.update})
        elif kind == "config":
            out["config"].update({u.key: json.loads(u.value_json) for u in rec.config.update})
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in rec.history.item:  # a value is under `key`, or under a `nested_key` path into dicts
                *parents, leaf = [item.key] if item.key else list(item.nested_key)
                node = row
                for name in parents:
                    node = node.setdefault(name, {})
                node[leaf] = json.loads(item.value_json)
            out["history"].append(row)
        elif kind == "exit":
            out["exit_code"] = rec.exit.exit_code
    return out


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _job_dirs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if (p / ".hydra").is_dir()), key=lambda p: int(p.name.split("_")[0]))


def _multirun(sweep: Path, text_file: Path, *args: str, **extra: object) -> None:
    # job dirs named by number only: the overrides (a tmp corpus path among them) would exceed a file name's length
    proc = run_cli("lfbyte.train", "-m", *tiny_overrides(text_file, **extra), *args, f"hydra.sweep.dir={sweep}",
                   "hydra.sweep.subdir=${hydra.job.num}", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # a failed job must not end the sweep


# -------------------------------------------------------------------- tests
def test_multirun_jobs_each_get_a_run_dir_and_a_grouped_offline_wandb_run(tmp_path: Path, text_file: Path) -> None:
    sweep = tmp_path / "sweep"
    _multirun(sweep, text_file, "logger=wandb", "logger.mode=offline", "logger.tags=[test]", "model.num_layers=1,2")
    jobs = _job_dirs(sweep)
    assert [j.name for j in jobs] == ["0", "1"]
    for job, layers in zip(jobs, (1, 2), strict=True):
        assert (job / "checkpoints" / "last.pth").is_file()
        final = json.loads((job / "metrics.json").read_text())
        assert final["status"] == "completed" and final["step"] == 6
        local = _jsonl(job / "metrics.jsonl")
        assert yaml.safe_load((job / "config.yaml").read_text())["model"]["num_layers"] == layers

        run = read_wandb_run(job)
        assert run["exit_code"] == 0
        assert run["run"].run_group == sweep.name  # one sweep, one W&B group
        assert run["run"].display_name == job.name and run["run"].job_type == "train"
        assert list(run["run"].tags) == ["test"]
        # the resolved config, as the job saw it
        assert run["config"]["model"]["num_layers"] == layers
        assert run["config"]["trainer"]["max_steps"] == 6 and run["config"]["logger"]["group"] == sweep.name
        # every locally logged value is in the W&B history at the same step (rows of one step merge, last wins)
        by_step: dict[int, dict[str, Any]] = {}
        for row in run["history"]:
            by_step.setdefault(row["_step"], {}).update(row)
        local_by_step: dict[int, dict[str, Any]] = {}
        for row in local:
            local_by_step.setdefault(row.pop("step"), {}).update(row)
        assert set(local_by_step) == set(by_step)
        for step, row in local_by_step.items():
            for key, value in row.items():
                assert by_step[step][key] == pytest.approx(value), (key, step)
        logged = set().union(*by_step.values())
        for key in ("train_loss", "lr", "grad_norm", "bytes_per_s", "model_tflops", "val_loss", "val_bpb",
                    "moe/layer0/router_entropy", "moe/layer0/balance_loss", "moe/layer0/expert1_load"):
            assert key in logged, key
        assert by_step[6]["val_bpb"] == pytest.approx(final["val_bpb"])

    rows = report(sweep)
    assert [(r["job"], r["status"], r["model.num_layers"]) for r in rows] == [(0, "completed", "1"), (1, "completed", "2")]
    assert rows[0]["parameters"] < rows[1]["parameters"]
    md = (sweep / "report.md").read_text()
    assert "| job | status | model.num_layers | parameters | val bits/byte |" in md
    assert f"{rows[1]['val bits/byte']:.4f}" in md
    assert (sweep / "report.png").read_bytes()[:8] == PNG_MAGIC


def test_failed_job_is_a_failed_row_and_its_wandb_run_is_closed(tmp_path: Path, text_file: Path) -> None:
    sweep = tmp_path / "sweep"
    # lr=1e30 diverges at step 2, after W&B started: the run must be finished as failed, the sweep go on
    _multirun(sweep, text_file, "logger=wandb", "logger.mode=offline", "optimizer.lr=1e30,2e-3",
              **{"optimizer.warmup_steps": 0})
    bad, good = _job_dirs(sweep)
    assert json.loads((bad / "metrics.json").read_text())["status"] == "failed"
    assert read_wandb_run(bad)["exit_code"] == 1
    assert json.loads((good / "metrics.json").read_text())["status"] == "completed"
    assert read_wandb_run(good)["exit_code"] == 0

    # a job killed before writing metrics.json is reported as incomplete with the values it had reached
    killed = sweep / "2"
    shutil.copytree(good, killed)
    (killed / "metrics.json").unlink()
    (killed / ".hydra" / "hydra.yaml").write_text(
        (killed / ".hydra" / "hydra.yaml").read_text().replace("num: 1", "num: 2"))

    out = tmp_path / "report"
    assert report_main([str(sweep), "--out", str(out)]) == 0
    with open(out / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["job"], r["status"]) for r in rows] == [("0", "failed"), ("1", "completed"), ("2", "incomplete")]
    assert "non-finite loss nan at step 2" in rows[0]["error"] and rows[0]["val bits/byte"] == ""
    assert rows[0]["parameters"] == rows[1]["parameters"]  # counted from the failed job's config
    assert float(rows[2]["val bits/byte"]) == pytest.approx(float(rows[1]["val bits/byte"]))
    md = (out / "report.md").read_text()
    assert "3 jobs: 1 finished, 2 failed, incomplete or not started." in md
    assert "| 0 | failed | 1e+30 |" in md and "non-finite loss nan at step 2" in md and "| 2 | incomplete |" in md
    assert (out / "report.png").read_bytes()[:8] == PNG_MAGIC

    # a sweep stopped before a job started: the planned job is a "not started" row
    shutil.rmtree(good)
    rows = report(sweep, plot=False)
    assert [(r["job"], r["status"], r["optimizer.lr"]) for r in rows] == [
        (0, "failed", "1e+30"), (1, "not started", "0.002"), (2, "incomplete", "0.002")]


def test_logger_none_writes_metrics_but_no_wandb_files(tmp_path: Path, text_file: Path) -> None:
    train(compose_cfg(*tiny_overrides(text_file), "logger=none"), tmp_path / "run")
    assert len(_jsonl(tmp_path / "run" / "metrics.jsonl")) > 6
    assert not list(tmp_path.rglob("*wandb*"))


def test_logger_writes_text_samples_locally_and_to_wandb(tmp_path: Path) -> None:
    cfg = {"name": "wandb", "mode": "offline", "project": "lfbyte-test", "group": "g", "job_type": "train"}
    logger = Logger(tmp_path, cfg, {"model": {"embed_dim": 8}})
    try:
        logger.log({"train_loss": 2.5, "val_bpb": float("nan")}, step=1)
        logger.log_text("samples", "first sample", step=1)
        logger.log_text("samples", "second | sample", step=2)
    finally:
        logger.finish()
    assert _jsonl(tmp_path / "samples.jsonl") == [
        {"step": 1, "key": "samples", "text": "first sample"},
        {"step": 2, "key": "samples", "text": "second | sample"},
    ]
    assert math.isnan(float(_jsonl(tmp_path / "metrics.jsonl")[0]["val_bpb"]))
    run = read_wandb_run(tmp_path)
    assert run["config"]["model"] == {"embed_dim": 8} and run["run"].run_group == "g"
    table_ref = [row["samples"] for row in run["history"] if "samples" in row][-1]
    assert table_ref["_type"] == "table-file" and table_ref["nrows"] == 2
    table = json.loads((run["files"] / table_ref["path"]).read_text())
    assert table["columns"] == ["step", "text"] and table["data"] == [[1, "first sample"], [2, "second | sample"]]


def test_online_without_api_key_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lfbyte.errors import ConfigError

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    with pytest.raises(ConfigError, match="wandb login"):
        Logger(tmp_path, {"name": "wandb", "mode": "online"}, {})
    assert not (tmp_path / "wandb").exists()


def test_wandb_group_and_name_are_null_outside_a_multirun() -> None:
    plain = to_plain(compose_cfg("logger=wandb"))
    assert plain["logger"]["group"] is None and plain["logger"]["run_name"] is None


def test_report_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert report_main([str(tmp_path / "missing")]) == 2
    assert report_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)
    assert "no Hydra job directories" in err[1]


def _sweep_combinations(params: dict[str, str]) -> list[list[str]]:
    combos: list[list[str]] = [[]]
    for key, values in params.items():
        combos = [c + [f"{key}={v.strip()}"] for c in combos for v in str(values).split(",")]
    return combos


def _valid_job(*overrides: str, models_checked: set[str] | None = None) -> dict[str, Any]:
    """Compose a job as the launcher would, validate it and check its model as a launch does (the memory estimate's
    forward on the meta device, the build); the plain config. ``models_checked``: what the model check read of
    jobs already checked — a job that matches one is not checked again (it reads neither the optimizer, the logger
    nor the seed)."""
    plain = to_plain(compose_cfg(*overrides))
    validate(plain)
    if models_checked is None:
        check_model(plain)
    elif (key := json.dumps({k: v for k, v in plain.items() if k not in ("optimizer", "logger", "seed")},
                            sort_keys=True, default=str)) not in models_checked:
        check_model(plain)
        models_checked.add(key)
    return plain


SWEEPS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml") if not p.stem.startswith("recipe_"))
RECIPES = sorted(p.stem for p in (CONF_DIR / "experiment").glob("recipe_*.yaml"))


@pytest.mark.parametrize("experiment", SWEEPS)
def test_every_job_of_the_shipped_experiments_is_a_valid_config(experiment: str) -> None:
    from hydra.types import RunMode

    check_overrides("train", [f"experiment={experiment}"], check=validate)  # the launcher's own pre-flight check
    exp = _compose_with_hydra(f"experiment={experiment}")
    assert exp.hydra.mode == RunMode.MULTIRUN  # `experiment=<name>` alone launches the sweep
    combos = _sweep_combinations(OmegaConf.to_container(exp.hydra.sweeper.params))
    assert len(combos) >= 2 and exp.trainer.max_time
    for combo in combos:
        _valid_job(f"experiment={experiment}", *combo)


@pytest.mark.parametrize("recipe", RECIPES)
def test_budget_recipes_are_single_runs_with_a_time_budget(recipe: str) -> None:
    plain = _valid_job(f"experiment={recipe}")
    minutes = int(recipe.split("_")[1].removesuffix("min"))
    assert plain["trainer"]["max_time"] == 60 * minutes and plain["trainer"]["epochs"] is None
    assert (plain["model"]["arch"] == "gpt") == recipe.endswith("_gpt")
    # every recipe, at any context, is scored on the same validation bytes as the others
    assert (plain["trainer"]["eval_scored"], plain["trainer"]["eval_windows"]) == (64, 256)


def _queued_jobs() -> dict[tuple[str, ...], str]:
    """Every distinct job of the queue files under experiments/ (seed and corpus path aside), with one line of each;
    a queue pinned to an older tree (a ``# commit:`` line, see experiments/run_queue.sh) reruns there, not here."""
    jobs: dict[tuple[str, ...], str] = {}
    for queue in sorted((REPO / "experiments").rglob("queue*.txt")):
        lines = queue.read_text().splitlines()
        if any(line.startswith("# commit:") for line in lines):
            continue
        for n, line in enumerate(lines, 1):
            if line.strip() and not line.lstrip().startswith("#"):
                # composing reads no data: one placeholder path stands for every corpus (data=bytes needs one)
                overrides = tuple("data.path=corpus" if w.startswith("data.path=") else w
                                  for w in line.split()[1:] if not w.startswith("seed="))
                jobs.setdefault(overrides, f"{queue.relative_to(REPO)}:{n}")
    return jobs


def test_every_queued_job_still_composes_and_validates() -> None:
    """The queue files are how every number under experiments/ is rerun: a key renamed or a value tightened since
    must fail here, naming the line, not an hour into a user's rerun."""
    jobs = _queued_jobs()
    assert len(jobs) > 50
    broken: list[str] = []
    checked: set[str] = set()  # half the lines share a model check with an earlier one
    for overrides, where in jobs.items():
        try:
            _valid_job(*overrides, models_checked=checked)
        except Exception as e:  # every broken line in one report
            broken.append(f"{where}: {' '.join(overrides)}: {type(e).__name__}: {e}")
    assert not broken, "\n".join(broken)


def test_ablations_each_turn_one_component_off() -> None:
    base = to_plain(compose_cfg("experiment=recipe_2min_moe"))["model"]
    changed = {}
    for ablation in ("none", "no_adaptive", "no_conditioner", "no_moe", "no_pos", "fixed_decay"):
        model = to_plain(compose_cfg("experiment=recipe_2min_moe", f"ablation={ablation}"))["model"]
        changed[ablation] = {k: v for k, v in model.items() if base.get(k) != v}
    assert changed == {"none": {}, "no_adaptive": {"adapt_rank": 0}, "no_conditioner": {"conv_size": 1},
                       "no_moe": {"num_experts": 1}, "no_pos": {"pos_encoding": "none"},
                       "fixed_decay": {"data_decay": False}}


def _compose_with_hydra(*overrides: str) -> Any:
    from hydra import compose, initialize_config_dir

    from lfbyte.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


@needs_plugin("hydra_plugins.hydra_submitit_launcher")
@needs_plugin("hydra_plugins.hydra_joblib_launcher")
def test_launcher_presets_build_their_launchers() -> None:
    slurm = _compose_with_hydra("hydra/launcher=slurm", "distributed=ddp", "distributed.nproc_per_node=4")
    launcher = instantiate(slurm.hydra.launcher)
    assert type(launcher).__name__ == "SlurmLauncher"
    assert launcher.params["gpus_per_node"] == 4 and launcher.params["tasks_per_node"] == 1
    local = _compose_with_hydra("hydra/launcher=local_parallel")
    launcher = instantiate(local.hydra.launcher)
    assert type(launcher).__name__ == "JoblibLauncher" and local.hydra.launcher.n_jobs == 2


@OPTUNA
def test_optuna_search_minimises_val_bpb() -> None:
    cfg = _compose_with_hydra("hparams_search=optuna")
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.sweeper.direction == "minimize"
    assert "optimizer.lr" in cfg.hydra.sweeper.params and cfg.trainer.max_time
