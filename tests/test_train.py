"""End-to-end training on tiny configs: run directory contents, learning, config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from lfbyte.checkpoint import load_checkpoint
from lfbyte.errors import ConfigError
from lfbyte.train import train

from .conftest import compose_cfg, run_cli, tiny_overrides


def test_every_config_group_composes() -> None:
    for group, choices in {
        "model": ["tiny", "small", "base"],
        "distributed": ["none", "ddp"],
        "logger": ["none", "wandb"],
        "data": ["text"],
    }.items():
        for choice in choices:
            cfg = compose_cfg(f"{group}={choice}")
            assert cfg[group] is not None
    cfg = compose_cfg()
    for key in ("epochs", "batch_size", "accumulation_steps", "max_grad_norm", "save_path"):
        assert key in cfg.trainer
    for key in ("seq_len", "embed_dim", "num_layers", "adapt_dim", "num_experts", "dropout"):
        assert key in cfg.model
    assert "lr" in cfg.optimizer


def test_tiny_run_writes_checkpoints_metrics_and_config(tmp_path: Path, text_file: Path) -> None:
    cfg = compose_cfg(*tiny_overrides(text_file, **{"trainer.max_steps": 30, "trainer.eval_interval": 10}))
    result = train(cfg, tmp_path)
    assert result["status"] == "completed" and result["step"] == 30
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("val_loss", "val_bpb", "step", "elapsed_s", "bytes_per_s"):
        assert key in metrics
    assert metrics["val_bpb"] == pytest.approx(metrics["val_loss"] / 0.6931471805599453)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["train_loss"] for r in rows if "train_loss" in r]
    assert len(train_losses) == 30
    assert sum(train_losses[-5:]) / 5 < sum(train_losses[:5]) / 5 - 0.3  # it learns
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["model"]["embed_dim"] == 64 and "${" not in (tmp_path / "config.yaml").read_text()
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pth")
    assert ckpt["trainer_state"]["step"] == 30 and ckpt["config"]["model"]["arch"] == "lfbyte"
    assert set(ckpt["model_state_dict"]) == set(torch.nn.Module.state_dict(_model(ckpt["config"])))


def _model(cfg: dict) -> torch.nn.Module:
    from lfbyte.model import build_model

    return build_model(cfg["model"])


def test_epochs_write_model_epoch_checkpoints_and_save_path(tmp_path: Path, text_file: Path) -> None:
    # 120 kB corpus, 10% validation: one epoch of 4 x 64-byte windows is ~422 steps; shrink with a small file
    small = tmp_path / "small.txt"
    small.write_text(text_file.read_text()[:6000])
    save = tmp_path / "elsewhere"
    cfg = compose_cfg(
        *tiny_overrides(small, **{"trainer.max_steps": None, "trainer.epochs": 2, "trainer.save_path": save})
    )
    result = train(cfg, tmp_path / "run")
    assert result["epoch"] == pytest.approx(2.0)
    names = sorted(p.name for p in save.iterdir())
    assert "model_epoch_1.pth" in names and "model_epoch_2.pth" in names and "last.pth" in names
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert "model_state_dict" in load_checkpoint(save / "model_epoch_1.pth")


def test_keep_last_rotates_step_checkpoints(tmp_path: Path, text_file: Path) -> None:
    cfg = compose_cfg(
        *tiny_overrides(text_file, **{"trainer.max_steps": 10, "trainer.checkpoint_interval": 2, "trainer.keep_last": 2})
    )
    train(cfg, tmp_path)
    steps = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*.pth"))
    assert steps == ["step_0000008.pth", "step_0000010.pth"]


def test_gradient_accumulation_matches_the_larger_batch(tmp_path: Path, text_file: Path) -> None:
    common = {"trainer.max_steps": 4, "model.num_experts": 1, "optimizer.warmup_steps": 1}
    a = train(compose_cfg(*tiny_overrides(text_file, **common, **{"trainer.batch_size": 8})), tmp_path / "a")
    b = train(
        compose_cfg(
            *tiny_overrides(text_file, **common, **{"trainer.batch_size": 4, "trainer.accumulation_steps": 2})
        ),
        tmp_path / "b",
    )
    assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-5)
    wa = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pth")["model_state_dict"]
    wb = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pth")["model_state_dict"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.top_k=5", "model.top_k=5 must be <= model.num_experts=2"),
        ("model.embed_dim=33", "model.embed_dim=33 must be divisible by model.num_heads=2"),
        ("trainer.batch_size=0", "trainer.batch_size=0 must be an integer >= 1"),
        ("trainer.precision=fp8", "trainer.precision='fp8' must be one of"),
        ("optimizer.lr=-1", "optimizer.lr=-1 must be a finite number > 0"),
        ("+model.bogus=1", "unknown LFByteTransformer option(s) ['bogus']"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path: Path, text_file: Path, override: str, message: str) -> None:
    cfg = compose_cfg(*tiny_overrides(text_file), override)
    with pytest.raises(ConfigError) as info:
        train(cfg, tmp_path)
    assert message in str(info.value)
    assert not (tmp_path / "checkpoints").exists()


def test_cli_bad_input_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    proc = run_cli(
        "lfbyte.train", "model=tiny", "data.path=/no/such/file.txt", f"hydra.run.dir={tmp_path}", "trainer.progress=false"
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: data.path='/no/such/file.txt' does not exist; give a file, a directory or a glob"
    ]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert list(tmp_path.iterdir()) == []  # refused before Hydra or training wrote anything


def test_cli_trains_on_the_embedded_default_corpus(tmp_path: Path) -> None:
    proc = run_cli(
        "lfbyte.train", "debug=fast", "trainer.max_steps=5", "trainer.num_threads=1", f"hydra.run.dir={tmp_path}",
        check=True,
    )
    assert "python-docs" in proc.stdout
    assert json.loads((tmp_path / "metrics.json").read_text())["step"] == 5
