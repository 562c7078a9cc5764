"""Every config key of every entry point, driven with extreme values: one clear error, or a clean run.

Hypothesis picks a key (every key of the composed ``train`` config, of ``conf/generate.yaml`` and
``conf/app.yaml``, every option of the report) and a value from the ends of what can be typed: huge
and negative integers, integers past 64 bits, non-finite floats, denormals, very long strings, names
longer than the filesystem allows, paths that are files or devices, lists where scalars belong. The
entry point runs in-process exactly as its ``main`` does (command-line check, then the program), under
a time limit: it must end in a :class:`LFByteError` (what ``main`` prints as ``error:`` lines, exit 2)
or a clean run. Any other exception is a traceback a user would see, and fails the test; so does a
run that outlives the time limit (a hang).

The fast suite draws a few dozen examples per entry point; ``-m slow`` draws many more.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from lfbyte import app as app_module
from lfbyte import generate as generate_module
from lfbyte import report as report_module
from lfbyte.checkpoint import save_checkpoint
from lfbyte.cli import check_overrides
from lfbyte.config import CONF_DIR, to_plain
from lfbyte.errors import LFByteError
from lfbyte.model import build_model
from lfbyte.resources import available_memory
from lfbyte.train import check, claim_for_launch, train

from .conftest import compose_cfg, make_text

FAST, SLOW = 15, 50  # SLOW: random real runs; 50 keeps the slow suite within minutes on 2 cores
# Each example is a real run (seconds): report the failing example as drawn, without minutes of shrinking.
PHASES = (Phase.explicit, Phase.reuse, Phase.generate)
# A train example is bounded by max_steps=2 and max_time=20, but building and stepping a legitimately large
# model (model.num_layers=2220 was drawn: 222M parameters) takes minutes on 2 cores; a hang takes forever.
TRAIN_LIMIT = 400
NAME_MAX = 255
TINY = {"arch": "lfbyte", "seq_len": 16, "embed_dim": 16, "num_layers": 1, "num_heads": 2, "adapt_dim": 8,
        "adapt_rank": 2, "chunk_size": 8, "num_experts": 2, "top_k": 1}


def _quoted(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


# What a user can type after ``key=``, from each end of what makes sense.
LITERALS = [
    "0", "-1", "1", "2", str(2**31), str(2**63 - 1), str(2**63), str(-(2**63) - 1), str(10**30), str(-(10**30)),
    "1e308", "-1e308", "1e-320", "0.5", "nan", "inf", "-inf", "true", "false", "null", "''", "[]", "[1,2,3]",
    "{a: 1}", _quoted("x" * 5000), _quoted("n" * (NAME_MAX + 45)), _quoted("/dev/null"), _quoted("/etc/passwd"),
    _quoted("../" * 40), _quoted("é" * 200), _quoted("a/" + "b" * 300 + "/c"),
]
VALUES = st.one_of(
    st.sampled_from(LITERALS),
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: repr(f).replace("e+", "e")),
    st.text(max_size=400).map(_quoted),
)


@contextlib.contextmanager
def time_limit(seconds: int, what: str) -> Iterator[None]:
    def on_alarm(_signum: int, _frame: object) -> None:
        raise TimeoutError(f"{what} still running after {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def fresh_cwd() -> Iterator[None]:
    """A relative path drawn for any key (``trainer.save_path=0``) lands in a temp folder, not the repo."""
    old = os.getcwd()
    os.chdir(tempfile.mkdtemp(prefix="every-key-cwd-"))
    try:
        yield
    finally:
        os.chdir(old)


@contextlib.contextmanager
def memory_limit() -> Iterator[None]:
    """Address space for what the machine has free: an allocation past it fails in this example, which Hypothesis
    then names, instead of the kernel's OOM killer ending the whole session without a word of what was drawn (CI
    lost a slow run that way)."""
    if not Path("/proc/self/status").exists():  # not Linux: no VmSize to start from
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as f:
        mapped = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    limit = int(mapped + available_memory({"device": "cpu"})[0])
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def assert_one_clean_outcome(run: Callable[[], Any], what: str, seconds: int = 120) -> None:
    """``run`` returns, or raises an LFByteError whose message is short lines (what ``main`` prints)."""
    try:
        with time_limit(seconds, what), fresh_cwd(), memory_limit():
            run()
    except LFByteError as e:
        lines = str(e).splitlines()
        assert lines and all(line.strip() for line in lines), (what, str(e))
        assert len(lines) <= 4, (what, lines)  # one override: one problem, at most a few lines
        assert "Traceback" not in str(e), what
    except SystemExit as e:  # argparse's and the CLI's own exits
        assert e.code in (0, 2, 141), (what, e.code)


def _flat_keys(d: Any, prefix: str = "") -> list[str]:
    if not isinstance(d, dict):
        return [prefix]
    return [k for key, v in d.items() for k in _flat_keys(v, f"{prefix}.{key}" if prefix else key)]


# ---------------------------------------------------------------------------------------------- train


def _train_keys() -> list[str]:
    keys = _flat_keys(to_plain(compose_cfg()))
    return sorted(keys) + ["hydra.run.dir", "model", "data", "optimizer", "trainer", "logger", "distributed",
                           "+trainer.new_key", "+" + "k" * 300]


TRAIN_KEYS = _train_keys()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    path = tmp_path_factory.mktemp("every-key") / "corpus.txt"
    path.write_text(make_text(20_000))
    return path


def _train_once(corpus: Path, key: str, value: str) -> None:
    if key.startswith("hydra."):  # Hydra itself reads these: only the real command line is the real thing
        return _train_cli(corpus, key, value)
    root = Path(tempfile.mkdtemp(prefix="every-key-"))
    base = {"model": "tiny", "data.path": str(corpus), "trainer.epochs": "null", "trainer.max_steps": "2",
            "trainer.max_time": "20", "trainer.batch_size": "2", "trainer.eval_interval": "1",
            "trainer.eval_windows": "2", "trainer.sample_length": "4", "trainer.log_interval": "1",
            "trainer.precision": "fp32", "trainer.num_threads": "1", "trainer.progress": "false",
            "hydra.run.dir": str(root / "run")}
    overrides = {**base, key: value}
    argv = [f"{k}={v}" for k, v in overrides.items()]
    check_overrides("train", argv, check=check, claim=claim_for_launch)  # what main() runs before Hydra
    run_dir = overrides.pop("hydra.run.dir")
    result = train(compose_cfg(*[f"{k}={v}" for k, v in overrides.items()]), run_dir)
    assert result["status"] in ("completed", "stopped"), result


def _train_cli(corpus: Path, key: str, value: str) -> None:
    from .conftest import cli_env

    if "\x00" in value:  # no shell can put a NUL byte in an argument: execve refuses it before lfbyte runs
        return
    args = ["model=tiny", f"data.path={corpus}", "trainer.max_steps=1", "trainer.epochs=null", "trainer.batch_size=2",
            "trainer.eval_windows=2", "trainer.sample_length=0", f"{key}={value}"]
    proc = subprocess.run([sys.executable, "-m", "lfbyte.train", *args], cwd=os.getcwd(), env=cli_env(),
                          capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode in (0, 2), proc.stderr[-3000:]
    if proc.returncode == 2:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert lines and all(line.startswith("error: ") for line in lines), proc.stderr[-3000:]


@settings(max_examples=FAST, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
          phases=PHASES)
@given(key=st.sampled_from(TRAIN_KEYS), value=VALUES)
@example(key="trainer.batch_size", value=str(10**8))
@example(key="model.seq_len", value="1")
@example(key="model.mlp_ratio", value="-1")
@example(key="hydra.run.dir", value=_quoted("/tmp/" + "r" * 300))
@example(key="data.path", value="/dev/null")
@example(key="trainer.sample_length", value="137438953473")  # CI drew it: a sample that never ends was a hang
@example(key="trainer.accumulation_steps", value=str(2**27))  # a step past max_time; ~100 B of Python per micro-batch
@example(key="model.conv_size", value="65536")  # decoding the evaluation sample: 65,536 taps per byte, a hang
def test_train_every_key(corpus: Path, key: str, value: str) -> None:
    assert_one_clean_outcome(lambda: _train_once(corpus, key, value), f"train {key}={value[:80]}", TRAIN_LIMIT)


@pytest.mark.slow
# derandomize=False: Hypothesis's CI profile (CI=true, which .ci/run sets) would fix the draws; this test is the
# random exploration, the FAST one above is the fixed set.
@settings(max_examples=SLOW, deadline=None, suppress_health_check=list(HealthCheck), phases=PHASES,
          derandomize=False)
@given(key=st.sampled_from(TRAIN_KEYS), value=VALUES)
def test_train_every_key_many(corpus: Path, key: str, value: str) -> None:
    assert_one_clean_outcome(lambda: _train_once(corpus, key, value), f"train {key}={value[:80]}", TRAIN_LIMIT)


# ------------------------------------------------------------------------------------- generate, app


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("every-key-run") / "run"
    run.mkdir()
    torch.manual_seed(0)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": TINY}))
    save_checkpoint({"model_state_dict": build_model(TINY).state_dict(), "config": {"model": TINY},
                     "trainer_state": {"step": 1}}, run / "checkpoints", step=1, keep_last=1)
    return run


def _flat_options(name: str) -> list[str]:
    data = yaml.safe_load((CONF_DIR / f"{name}.yaml").read_text())
    return [k for k in data if k not in ("defaults", "hydra")] + ["+new_key"]


class _Head(io.StringIO):
    """stdout read by ``| head -c 400``: the reader goes away after 400 characters."""

    def write(self, s: str) -> int:
        if self.tell() + len(s) > 400:
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(s)


def _generate_once(run: Path, key: str, value: str) -> None:
    overrides = {"run_dir": str(run), "max_length": "8", "num_threads": "1", key: value}
    argv = [f"{k}={v}" for k, v in overrides.items()]
    check_overrides("generate", argv, flat=True)
    cfg = OmegaConf.to_container(_compose_flat("generate", argv))
    with contextlib.redirect_stdout(_Head()):
        try:
            generate_module.run_cli(to_plain(cfg))
        except BrokenPipeError:
            pass  # main() exits 141 quietly: a long generation read by `head`


def _compose_flat(name: str, argv: list[str]) -> Any:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(name, overrides=argv)


@settings(max_examples=FAST, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
          phases=PHASES)
@given(key=st.sampled_from(_flat_options("generate")), value=VALUES)
@example(key="max_length", value=str(10**30))
@example(key="keep", value=str(2**63))
def test_generate_every_key(tiny_run: Path, key: str, value: str) -> None:
    assert_one_clean_outcome(lambda: _generate_once(tiny_run, key, value), f"generate {key}={value[:80]}", 60)


def _app_once(run: Path, key: str, value: str) -> None:
    overrides = {"run_dir": str(run), "runs_root": str(run.parent), "num_threads": "1", key: value}
    argv = [f"{k}={v}" for k, v in overrides.items()]
    check_overrides("app", argv, flat=True)
    cfg = to_plain(OmegaConf.to_container(_compose_flat("app", argv)))
    app_module.prepare(cfg)  # everything serve() does before it opens the port


@settings(max_examples=FAST, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
          phases=PHASES)
@given(key=st.sampled_from(_flat_options("app")), value=VALUES)
@example(key="server_name", value=_quoted("h" * 300))
@example(key="cache_size", value=str(10**30))
def test_app_every_key(tiny_run: Path, key: str, value: str) -> None:
    assert_one_clean_outcome(lambda: _app_once(tiny_run, key, value), f"app {key}={value[:80]}", 60)


# A value holding line breaks, for every key of every command: each message that echoes it must keep its lines
# (a random draw found NEL in a config name, and newlines in a path; LFByteError escapes the first kind, errors.shown
# the second). One fixed value per key, so the random tests above need not be lucky to find a new echo.
LINE_BREAKS = _quoted("a\n\nb\x85\x1cc\u2028d")
EVERY_KEY = ([("train", k) for k in TRAIN_KEYS] + [("generate", k) for k in _flat_options("generate")]
             + [("app", k) for k in _flat_options("app")])


@pytest.mark.parametrize(("command", "key"), EVERY_KEY, ids=[f"{c}-{k[:40]}" for c, k in EVERY_KEY])
def test_a_value_with_line_breaks_keeps_every_message_to_its_lines(
        request: pytest.FixtureRequest, command: str, key: str) -> None:
    if command == "train":
        corpus = request.getfixturevalue("corpus")
        run = lambda: _train_once(corpus, key, LINE_BREAKS)  # noqa: E731
    else:
        tiny = request.getfixturevalue("tiny_run")
        run = lambda: (_generate_once if command == "generate" else _app_once)(tiny, key, LINE_BREAKS)  # noqa: E731
    assert_one_clean_outcome(run, f"{command} {key}={LINE_BREAKS!r}", TRAIN_LIMIT)


# -------------------------------------------------------------------------------------------- report


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("every-key-sweep")
    for i, lr in enumerate(("1e-3", "2e-3")):
        job = root / f"{i}_optimizer.lr={lr}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"optimizer.lr={lr}"]))
        (job / "metrics.json").write_text(json.dumps({"status": "completed", "val_bpb": 3.0 - i, "step": 10}))
        (job / "metrics.jsonl").write_text(json.dumps({"step": 10, "val_bpb": 3.0 - i, "elapsed_s": 1.0}) + "\n")
    return root


REPORT_OPTIONS = ["--out", "--by", "--x", "--per", "--vs", "sweep_dir"]
REPORT_VALUES = st.one_of(st.sampled_from(["", "-", "x" * 5000, "n" * 300, "/dev/null", "/etc/passwd", "..",
                                           "a=b", "=", "optimizer.lr=1e-3", "é" * 200, "\x00"]),
                          st.text(max_size=300))


def _report_once(sweep: Path, option: str, value: str) -> None:
    out = Path(tempfile.mkdtemp(prefix="every-key-report-"))
    args = {"sweep_dir": str(sweep), "--out": str(out), "--by": None, "--x": None, "--per": None, "--vs": None}
    args[option] = value
    argv = [args["sweep_dir"]] + [a for k, v in args.items() if k != "sweep_dir" and v is not None for a in (k, v)]
    code = report_module.main([*argv, "--no-plot"])
    assert code in (0, 2)


@settings(max_examples=FAST, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
          phases=PHASES)
@given(option=st.sampled_from(REPORT_OPTIONS), value=REPORT_VALUES)
def test_report_every_option(sweep: Path, option: str, value: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert_one_clean_outcome(lambda: _report_once(sweep, option, value), f"report {option} {value[:80]!r}", 60)


def test_the_cli_prints_the_same_one_line(tmp_path: Path, corpus: Path) -> None:
    """The in-process check above is what the command line prints: one ``error:`` line, exit 2."""
    from .conftest import run_cli

    proc = run_cli("lfbyte.train", "model=tiny", f"data.path={corpus}", "trainer.batch_size=100000000",
                   f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: this run needs about "), proc.stderr
    assert "trainer.check_memory=false" in lines[0]
    assert not (tmp_path / "run").exists()
