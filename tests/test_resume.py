"""Exact resume, pre-emption (SIGTERM) and crashes (SIGKILL) at random moments."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lfbyte.checkpoint import load_checkpoint
from lfbyte.train import train

from .conftest import REPO, cli_env, compose_cfg, tiny_overrides

# Dropout and input noise on, so resuming must also restore the RNGs that draw the masks and the noise.
RESUME = {"trainer.max_steps": 16, "model.dropout": 0.1, "data.input_noise": 0.1, "trainer.eval_interval": 4}


def _train_losses(run: Path, live: bool = False) -> dict[int, float]:
    """step -> train loss; after a crash a step may be logged twice: the later row wins.

    ``live``: the run is still writing, so the last line may be half there; it is left for the next read.
    Otherwise every line must parse.
    """
    if not (run / "metrics.jsonl").exists():
        return {}
    lines = [r for r in (run / "metrics.jsonl").read_text().splitlines() if r.strip()]
    if live and lines:
        try:
            json.loads(lines[-1])
        except ValueError:
            lines.pop()
    rows = [json.loads(r) for r in lines]
    return {r["step"]: r["train_loss"] for r in rows if "train_loss" in r}


def _assert_same_weights(a: Path, b: Path, atol: float = 1e-6) -> None:
    wa = load_checkpoint(a / "checkpoints" / "last.pth")["model_state_dict"]
    wb = load_checkpoint(b / "checkpoints" / "last.pth")["model_state_dict"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=0)


def test_stop_and_resume_equals_an_uninterrupted_run(tmp_path: Path, text_file: Path) -> None:
    full = train(compose_cfg(*tiny_overrides(text_file, **RESUME)), tmp_path / "full")
    first = train(compose_cfg(*tiny_overrides(text_file, **RESUME, **{"trainer.stop_at_step": 7})), tmp_path / "cut")
    assert first["status"] == "stopped" and first["step"] == 7
    resumed = train(compose_cfg(*tiny_overrides(text_file, **RESUME, **{"trainer.resume": "auto"})), tmp_path / "cut")
    assert resumed["resumed_from"].endswith("last.pth") and resumed["step"] == 16
    assert _train_losses(tmp_path / "cut") == _train_losses(tmp_path / "full")  # bitwise, every step
    assert resumed["val_loss"] == full["val_loss"]
    _assert_same_weights(tmp_path / "full", tmp_path / "cut", atol=0.0)


def test_resume_auto_without_checkpoints_starts_fresh(tmp_path: Path, text_file: Path) -> None:
    result = train(compose_cfg(*tiny_overrides(text_file, **{"trainer.resume": "auto"})), tmp_path)
    assert result["resumed_from"] is None and result["step"] == 6


def _spawn_train(run_dir: Path, text_file: Path, **extra: object) -> subprocess.Popen:
    args = [f"hydra.run.dir={run_dir}", *tiny_overrides(text_file, **extra)]
    return subprocess.Popen(
        [sys.executable, "-m", "lfbyte.train", *args],
        cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _wait_for_step(proc: subprocess.Popen, run: Path, step: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        losses = _train_losses(run, live=True)
        if losses and max(losses) >= step:
            return max(losses)
        if proc.poll() is not None:
            raise AssertionError(f"training exited early ({proc.returncode}):\n{proc.stdout.read()}")
        time.sleep(0.02)
    raise AssertionError(f"step {step} not reached in {timeout}s")


def test_sigterm_writes_a_checkpoint_and_exits_cleanly(tmp_path: Path, text_file: Path) -> None:
    proc = _spawn_train(tmp_path, text_file, **{"trainer.max_steps": 100_000})
    _wait_for_step(proc, tmp_path, 3)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "interrupted: checkpoint saved at step" in out and "Traceback" not in out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "interrupted"
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pth")
    assert ckpt["trainer_state"]["step"] == metrics["step"] >= 3


@pytest.mark.slow
def test_repeated_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path: Path, text_file: Path) -> None:
    extra = {"trainer.max_steps": 60, "trainer.checkpoint_interval": 4, "model.dropout": 0.1,
             "trainer.eval_interval": 20}
    reference = train(compose_cfg(*tiny_overrides(text_file, **extra)), tmp_path / "reference")
    run = tmp_path / "killed"
    rng = random.Random(0)
    target, kills = 0, 0
    while kills < 3:
        proc = _spawn_train(run, text_file, **extra, **{"trainer.resume": "auto"})
        target = max(target, *(_train_losses(run, live=True) or {0: 0}).keys()) + rng.randint(3, 12)
        _wait_for_step(proc, run, target)
        time.sleep(rng.random() * 0.05)  # anywhere: mid-step, mid-checkpoint-write
        proc.kill()
        proc.wait()
        kills += 1
    proc = _spawn_train(run, text_file, **extra, **{"trainer.resume": "auto"})
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    final = json.loads((run / "metrics.json").read_text())
    assert final["step"] == 60 and final["resumed_from"]
    assert _train_losses(run) == _train_losses(tmp_path / "reference")  # the loss curve is continuous
    assert final["val_loss"] == pytest.approx(reference["val_loss"], abs=1e-6)
    _assert_same_weights(tmp_path / "reference", run)
