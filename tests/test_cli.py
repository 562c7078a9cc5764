"""Every entry point (``python -m lfbyte`` lists them) keeps one contract: bad input is one ``error:`` line and
exit 2, before anything is trained, served or measured. And each benchmark part runs end to end on a tiny setting."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from lfbyte.__main__ import COMMANDS

from .conftest import REPO, assert_one_error, cli_env, run_cli

# Per entry point: a misspelt option, and a value the entry point's own check refuses (with its line).
BAD_INPUT = {
    "train": (["trainer.max_stepz=3"], re.compile(r"error: trainer\.max_stepz is not a known option.*")),
    "generate": (["max_lenght=3"], re.compile(r"error: max_lenght is not a known option \(did you mean max_length\?\).*")),
    "app": (["server_prot=1"], re.compile(r"error: server_prot is not a known option \(did you mean server_port\?\).*")),
    "compress": (["mode=zip"], "error: mode='zip' must be compress or decompress"),
    "export": (["overwrite=maybe"], "error: overwrite='maybe' must be true or false"),
    "report": (["somewhere", "--fancy"], "error: unrecognized arguments: --fancy; see python -m lfbyte.report --help"),
    "bench": (["bench.sections=[speed]"], re.compile(r"error: bench\.sections has unknown \['speed'\].*")),
    "bench.train": (["prest=tiny"], re.compile(r"error: prest is not a known option \(did you mean preset\?\).*")),
    "bench.decode": (["contexts=[2000]"], re.compile(r"error: the longest context 2000 \+ new_bytes=64 must fit "
                                                     r"seq_len=1024; raise seq_len=")),
    "bench.memory": (["strategies=[zero3]"], "error: strategies=['zero3']: each must be ddp or fsdp"),
}
BAD_VALUE = {
    "bench.train": (["procs=[0]"], re.compile(r"error: procs=\[0\]: each must be an integer in 1\.\.\d+ .*")),
    "bench.decode": (["preset=smal"], re.compile(r"error: model=smal is not an option.*")),
}


def test_every_command_has_a_bad_input_case() -> None:
    assert set(BAD_INPUT) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(BAD_INPUT))
def test_bad_input_is_one_error_line_and_exit_2(command: str, tmp_path: Path) -> None:
    args, expected = BAD_INPUT[command]
    if command == "bench":
        args = [*args, f"hydra.run.dir={tmp_path / 'bench'}"]
    assert_one_error(run_cli(f"lfbyte.{command}", *args, timeout=120), expected)


@pytest.mark.parametrize("command", sorted(BAD_VALUE))
def test_bench_parts_check_their_values_before_measuring(command: str) -> None:
    args, expected = BAD_VALUE[command]
    assert_one_error(run_cli(f"lfbyte.{command}", *args, timeout=120), expected)


def test_bench_train_measures_a_tiny_model_end_to_end() -> None:
    proc = run_cli("lfbyte.bench.train", "preset=tiny", "steps=10", "global_batch=2", "threads=1", "procs=[1]",
                   "precisions=[fp32]", "extra=['model.seq_len=32']", timeout=300, check=True)
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| fp32 |")]
    assert len(rows) == 1 and rows[0].endswith("| 1.00x |"), proc.stdout
    assert "`python -m lfbyte.bench.train preset=tiny" in proc.stdout


def test_bench_decode_prints_its_table_from_the_command_line() -> None:
    proc = run_cli("lfbyte.bench.decode", "preset=tiny", "seq_len=64", "contexts=[8]", "new_bytes=2", "repeats=1",
                   "num_threads=1", timeout=120, check=True)
    assert "| context (bytes) | uncached (bytes/s) | cached (bytes/s) | cached / uncached |" in proc.stdout
    assert re.search(r"^\| 8 \| [\d,]+ \| [\d,]+ \| [\d.]+× \|$", proc.stdout, flags=re.M), proc.stdout


@pytest.mark.parametrize(("args", "option", "package"), [
    (["hparams_search=optuna"], "hydra/sweeper=optuna", "hydra-optuna-sweeper"),
    (["-m", "hydra/launcher=slurm", "seed=1,2"], "hydra/launcher=slurm", "hydra-submitit-launcher"),
    (["-m", "hydra/launcher=local_parallel", "seed=1,2"], "hydra/launcher=local_parallel", "hydra-joblib-launcher"),
])
def test_a_missing_plugin_names_the_extra_that_installs_it(args: list[str], option: str, package: str,
                                                          tmp_path: Path) -> None:
    """Without the cluster extra, Hydra would say only that the option does not exist."""
    (tmp_path / "sitecustomize.py").write_text(
        "import hydra_plugins\nhydra_plugins.__path__ = []  # as if no Hydra plugin package were installed\n")
    env = {**cli_env(), "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "lfbyte.train", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert_one_error(proc, f"error: {option} needs the {package} plugin, which is not installed; install it: "
                           "pip install 'lfbyte[cluster]' (in a checkout: pip install -e '.[cluster]')", quiet=True)


def test_bench_memory_measures_what_each_rank_holds() -> None:
    proc = run_cli("lfbyte.bench.memory", "preset=tiny", "procs=[1,2]", "extra=['model.seq_len=32']", timeout=300,
                   check=True)
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in proc.stdout.splitlines()
            if line.startswith(("| ddp |", "| fsdp |"))}
    assert set(rows) == {("ddp", "1"), ("ddp", "2"), ("fsdp", "1"), ("fsdp", "2")}, proc.stdout
    per_param = {k: float(v.rstrip(" |").split("|")[-1]) for k, v in rows.items()}
    # fp32 weights + gradients + AdamW's two moments: 16 bytes per parameter, halved by sharding over 2 ranks
    assert per_param["ddp", "1"] == per_param["ddp", "2"] == per_param["fsdp", "1"] == 16.0
    assert 8.0 <= per_param["fsdp", "2"] < 8.5  # each shard is padded to equal size
