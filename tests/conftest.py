"""Shared fixtures: a small deterministic text corpus, Hydra compose, and CLI runners."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from lfbyte.train import CONF_DIR

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
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))


def tiny_overrides(text_file: Path, **extra: object) -> list[str]:
    base = {
        "model": "tiny",
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
