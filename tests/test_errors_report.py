"""``python -m lfbyte.report`` under bad input: a bad command line is one ``error:`` line and exit 2;
a sweep with torn, hand-edited or foreign job files is still reported, each such job a row that says
what is wrong with it, never a crash."""

from __future__ import annotations

import csv
import json
import re
import subprocess
from pathlib import Path

import pytest

from lfbyte.report import NO_METRICS
from lfbyte.report import main as report_main

from .conftest import run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _job(sweep: Path, num: int, embed_dim: int, *, metrics: str | bytes | None = None,
         jsonl: str | bytes | None = None, overrides: str | None = None, hydra: str | None = None) -> Path:
    """A Hydra job folder as a multirun leaves it; each file's content can be replaced by a broken one."""
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(overrides or f"- model.embed_dim={embed_dim}\n")
    (job / ".hydra" / "hydra.yaml").write_text(hydra or f"hydra:\n  job:\n    num: {num}\n")
    for name, content in (("metrics.json", metrics), ("metrics.jsonl", jsonl)):
        if isinstance(content, str):
            (job / name).write_text(content)
        elif isinstance(content, bytes):
            (job / name).write_bytes(content)
    return job


def _rows(n: int, bpb: float) -> str:
    return "".join(json.dumps({"step": 3 * i, "val_bpb": bpb + 1 / i, "elapsed_s": float(i)}) + "\n"
                   for i in range(1, n + 1))


def _completed(bpb: float) -> str:
    return json.dumps({"status": "completed", "val_bpb": bpb, "step": 6, "elapsed_s": 2.0, "parameters": 1000})


@pytest.fixture
def damaged_sweep(tmp_path: Path) -> Path:
    sweep = tmp_path / "sweep"
    # finished; a hand-edited curve with a null and a string where numbers belong
    _job(sweep, 0, 32, metrics=_completed(2.5), jsonl=_rows(2, 2.5) + '{"step": 7, "val_bpb": null, "elapsed_s": 3}\n'
         '{"step": 8, "val_bpb": "x", "elapsed_s": 4}\n')
    # killed while writing metrics.json; metrics.jsonl ends in a torn line
    _job(sweep, 1, 64, metrics='{"status": "compl', jsonl=_rows(2, 2.4) + '{"step": 9, "val_')
    # valid JSON of the wrong shape, and metrics.jsonl rows that are not objects
    _job(sweep, 2, 96, metrics="[1, 2]", jsonl='5\n"x"\nnull\n[1]\n')
    # binary garbage
    _job(sweep, 3, 128, metrics=b"\xff\xfe\x00\x01garbage", jsonl=b"\xff\xfe\n")
    # still running: no metrics.json, a non-UTF-8 line among the rows
    _job(sweep, 4, 160, jsonl=_rows(1, 2.6).encode() + b"\xff\xfe\n")
    # unreadable overrides / hydra.yaml: the outcome is still known
    _job(sweep, 5, 192, metrics=_completed(2.3), overrides="[unclosed\n")
    _job(sweep, 6, 224, metrics=_completed(2.2), hydra=": : :\n  - x\n")
    _job(sweep, 7, 256, metrics=_completed(2.1), overrides="just a string\n")
    (sweep / "multirun.yaml").write_text("hydra: [\n")  # torn: no command line, no planned jobs
    return sweep


def _assert_one_error(proc: subprocess.CompletedProcess, expected: str) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [expected]


def test_a_damaged_sweep_is_reported_with_each_bad_job_named(damaged_sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    proc = run_cli("lfbyte.report", str(damaged_sweep), "--out", str(out), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no traceback, and no matplotlib warning either
    with open(out / "report.csv") as f:
        rows = {int(r["job"]): r for r in csv.DictReader(f)}
    assert {n: r["status"] for n, r in rows.items()} == {
        0: "completed", 1: "unknown", 2: "unknown", 3: "unknown", 4: "incomplete", 5: "completed", 6: "completed",
        7: "completed"}
    showing = "; showing the last values in metrics.jsonl"
    assert rows[1]["error"] == f"metrics.json is not valid JSON (Unterminated string starting at: line 1 column 12 " \
                               f"(char 11)){showing}"
    assert float(rows[1]["val bits/byte"]) == pytest.approx(2.4 + 1 / 2)  # the last whole row, not the torn one
    assert rows[2]["error"] == "metrics.json holds an array, not a JSON object" and rows[2]["val bits/byte"] == ""
    assert re.fullmatch(r"metrics\.json is not valid JSON \(.+\)", rows[3]["error"]), rows[3]["error"]
    assert rows[4]["error"] == NO_METRICS and float(rows[4]["val bits/byte"]) == pytest.approx(3.6)
    assert rows[5]["error"] == "overrides.yaml is not readable YAML (while parsing a flow sequence)"
    assert rows[5]["model.embed_dim"] == "" and float(rows[5]["val bits/byte"]) == 2.3
    assert rows[6]["error"] == "" and rows[6]["model.embed_dim"] == "224"  # its number from the folder name
    assert rows[7]["error"] == "overrides.yaml is not a list of overrides"
    md = (out / "report.md").read_text()
    assert "8 jobs: 4 finished, 4 failed, incomplete or not started." in md
    assert "Best: job 7" in md and "Command:" not in md
    assert "| 2 | unknown | 96 |" in md and "metrics.json holds an array, not a JSON object" in md
    assert (out / "report.png").read_bytes()[:8] == PNG_MAGIC
    assert proc.stdout.endswith(f"wrote {out / 'report.md'}, {out / 'report.csv'}, {out / 'report.png'} "
                                "(8 jobs, 4 not completed)\n")


def test_bad_sweep_dirs_and_outputs_are_one_line(tmp_path: Path, damaged_sweep: Path) -> None:
    missing = tmp_path / "missing"
    _assert_one_error(run_cli("lfbyte.report", str(missing)),
                      f"error: {missing} is not a directory; pass a multirun dir such as outputs/multirun/<time>")
    (tmp_path / "empty").mkdir()
    _assert_one_error(run_cli("lfbyte.report", str(tmp_path / "empty")),
                      f"error: no Hydra job directories (with .hydra/overrides.yaml) under {tmp_path / 'empty'}; "
                      "pass a multirun dir such as outputs/multirun/<time>")
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    _assert_one_error(run_cli("lfbyte.report", str(damaged_sweep), "--out", str(blocker), "--no-plot"),
                      f"error: --out {blocker} is a file; pass a folder to write report.md, report.csv and "
                      "report.png into")
    assert blocker.read_text() == "keep me"


def test_an_unknown_argument_is_one_line_not_argparse_usage() -> None:
    _assert_one_error(run_cli("lfbyte.report", "somewhere", "--fancy"),
                      "error: unrecognized arguments: --fancy; see python -m lfbyte.report --help")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], "error: the following arguments are required: sweep_dir; see python -m lfbyte.report --help"),
        (["x", "--x", "loss"], "error: argument --x: invalid choice: 'loss' (choose from 'parameters', 'elapsed_s', "
                               "'bytes_per_s', 'train_flops'); see python -m lfbyte.report --help"),
        (["x", "--out"], "error: argument --out: expected one argument; see python -m lfbyte.report --help"),
    ],
)
def test_argparse_errors_are_one_line(argv: list[str], expected: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        report_main(argv)
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [expected] and captured.out == ""


def test_a_by_key_that_is_not_swept_and_an_unwritable_out_are_one_line(damaged_sweep: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    assert report_main([str(damaged_sweep), "--by", "optimizer.lr", "--no-plot"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: --by 'optimizer.lr' is not an override of this sweep; choose from ['model.embed_dim']"]
    under_proc = "/proc/lfbyte-report-test"  # a folder nobody can create, root included
    assert report_main([str(damaged_sweep), "--out", under_proc, "--no-plot"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: cannot write the report to {under_proc}: No such file or directory; pass --out <a writable folder>"]
