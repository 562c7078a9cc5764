"""Shared fixtures: a small deterministic text corpus, Hydra compose, and CLI runners."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from lfbyte.config import CONF_DIR

REPO = Path(__file__).resolve().parent.parent
WORDS = (
    "the model reads bytes and predicts the next one a causal mixer sees only the past while experts "
    "share the work of every token gradients flow back through time and the loss falls slowly"
).split()

# One torch thread per process: two busy processes on two cores slow each other badly.
torch.set_num_threads(1)


def make_text(n_bytes: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    out, size = [], 0
    while size < n_bytes:
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 14))).capitalize() + ". "
        out.append(sentence)
        size += len(sentence)
    return "".join(out)[:n_bytes]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lfbyte-cache")
    os.environ["LFBYTE_CACHE"] = str(path)  # spawned workers and subprocesses inherit it
    return path


@pytest.fixture(scope="session")
def text_file(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(make_text(120_000))
    return path


def compose_cfg(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


CLUSTER_EXTRA = "pip install -e '.[cluster]'"


def needs_plugin(module: str) -> pytest.MarkDecorator:
    """Skip (naming the install command) when a Hydra plugin of the ``cluster`` extra is not installed."""
    import importlib.util

    try:
        found = importlib.util.find_spec(module) is not None
    except ImportError:
        found = False
    return pytest.mark.skipif(not found, reason=f"needs {module.split('.')[-1]}: {CLUSTER_EXTRA}")


OPTUNA = needs_plugin("hydra_plugins.hydra_optuna_sweeper")


def flat_defaults(name: str) -> dict:
    """The options of a one-file config (generate, app, bench_decode, ...) as shipped."""
    import yaml

    data = yaml.safe_load((CONF_DIR / f"{name}.yaml").read_text())
    return {k: v for k, v in data.items() if k not in ("defaults", "hydra")}


def tiny_overrides(text_file: Path, **extra: object) -> list[str]:
    base = {
        "model": "tiny",
        # the settings these tests were written against, not the preset's tuned ones (which may move)
        "optimizer.lr": 2e-3,
        "optimizer.warmup_steps": 50,
        "data.path": str(text_file),
        "trainer.epochs": "null",
        "trainer.max_steps": 6,
        "trainer.batch_size": 4,
        "trainer.eval_interval": 3,
        "trainer.eval_windows": 8,
        "trainer.log_interval": 1,
        "trainer.precision": "fp32",
        "trainer.num_threads": 1,
        "trainer.progress": "false",
    }
    base.update({k: v for k, v in extra.items()})
    return [f"{k}={'null' if v is None else v}" for k, v in base.items()]


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    return env


def run_cli(module: str, *args: str, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@contextmanager
def serve_app(log_path: Path, *args: str, timeout: float = 180) -> Iterator[str]:
    """``python -m lfbyte.app`` on a free loopback port until the block ends; yields its URL."""
    from lfbyte.distributed import free_port

    port = free_port()
    env = {**cli_env(), "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("GRADIO_ALLOWED_PATHS", None)  # the app's own rules, not an operator's widening of them
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "lfbyte.app", f"server_port={port}", "num_threads=1", *args],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"app exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"app did not start in {timeout:.0f} s:\n{log_path.read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def assert_one_error(proc: subprocess.CompletedProcess, expected: str | re.Pattern, quiet: bool = False) -> None:
    """A CLI that refused bad input: exit 2, no traceback, exactly one ``error:`` line on stderr
    (equal to ``expected``, or matching it in full). ``quiet``: stderr is only that line, stdout empty."""
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.splitlines() if quiet else [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, proc.stderr
    if quiet:
        assert proc.stdout == ""
    if isinstance(expected, re.Pattern):
        assert expected.fullmatch(lines[0]), lines[0]
    else:
        assert lines[0] == expected


class EvilPickle:
    """Unpickling this runs a shell command: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


CHROMIUM = Path("/usr/bin/chromium")


@contextmanager
def headless_chromium() -> Iterator:
    """Debian's chromium driven by Playwright (its own browser download does not work here). Locally a
    missing browser skips; under CI (CI=true, set by .ci/run) it fails: CI must open a real browser."""
    missing = pytest.fail if os.environ.get("CI") == "true" else pytest.skip
    if not CHROMIUM.exists():
        missing("Debian chromium is not installed (apt-get install -y chromium); .ci/run installs it")
    try:
        import playwright.sync_api as playwright
    except ImportError:
        missing("playwright is not installed: pip install -e '.[dev]'")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        try:
            yield browser
        finally:
            browser.close()
