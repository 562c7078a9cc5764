"""DDP equivalence (gloo, CPU), torchrun multi-node on loopback, mixed precision."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lfbyte.checkpoint import load_checkpoint
from lfbyte.distributed import free_port
from lfbyte.precision import cpu_has_fast_bf16, resolve_precision
from lfbyte.train import train

from .conftest import REPO, cli_env, compose_cfg, tiny_overrides

# The balance loss is computed per micro-batch (as in Switch/GShard), so it is the one term that
# depends on how a global batch is divided; switch it off to test exact equivalence of everything else.
EXACT = {"model.moe_balance_weight": 0.0, "trainer.max_steps": 4, "optimizer.warmup_steps": 1}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / "last.pth")["model_state_dict"]


def test_two_process_ddp_equals_one_process_with_the_same_global_batch(tmp_path: Path, text_file: Path) -> None:
    single = train(compose_cfg(*tiny_overrides(text_file, **EXACT, **{"trainer.batch_size": 8})), tmp_path / "one")
    ddp = train(
        compose_cfg(
            *tiny_overrides(text_file, **EXACT, **{"trainer.batch_size": 4}),
            "distributed=ddp",
            "distributed.nproc_per_node=2",
        ),
        tmp_path / "two",
    )
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    assert ddp["val_loss"] == pytest.approx(single["val_loss"], abs=1e-5)
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4)
    # only rank 0 wrote: one metrics.jsonl row per logged step, not two
    rows = [json.loads(r) for r in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train_loss" in r] == [1, 2, 3, 4]


def test_ddp_with_accumulation_matches_too(tmp_path: Path, text_file: Path) -> None:
    noised = {**EXACT, "data.input_noise": 0.2}  # the noise too is the step's, not the rank's or micro-step's
    train(compose_cfg(*tiny_overrides(text_file, **noised, **{"trainer.batch_size": 8})), tmp_path / "one")
    train(
        compose_cfg(
            *tiny_overrides(text_file, **noised, **{"trainer.batch_size": 2, "trainer.accumulation_steps": 2}),
            "distributed=ddp",
        ),
        tmp_path / "two",
    )
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4)


def test_error_on_a_worker_stops_all_ranks_with_its_message(tmp_path: Path, text_file: Path) -> None:
    from lfbyte.errors import CheckpointError

    cfg = compose_cfg(*tiny_overrides(text_file), "distributed=ddp", "trainer.resume=/no/such/ckpt.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        train(cfg, tmp_path)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_without_nans(
    tmp_path: Path, text_file: Path, precision: str, capsys: pytest.CaptureFixture
) -> None:
    cfg = compose_cfg(*tiny_overrides(text_file, **{"trainer.precision": precision, "trainer.max_steps": 12}))
    result = train(cfg, tmp_path)
    assert result["precision"] == precision
    # bf16 without the CPU's bf16 units is emulated (9x slower): the run says so, once, and trains anyway
    warned = capsys.readouterr().err.count("warning: trainer.precision=bf16 on a CPU without bf16 units")
    assert warned == (precision == "bf16" and not cpu_has_fast_bf16())
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in rows if "train_loss" in r]
    assert all(isinstance(v, float) and v == v for v in losses) and losses[-1] < losses[0]
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pth")
    assert all(torch.isfinite(v).all() for v in ckpt["model_state_dict"].values())
    if precision == "fp16":
        assert ckpt["scaler_state_dict"]["scale"] > 0  # the gradient scaler was active and is saved


def test_auto_precision_picks_bf16_where_the_cpu_has_bf16_units() -> None:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fast = "avx512_bf16" in flags or "amx_bf16" in flags
    assert cpu_has_fast_bf16() == fast
    assert resolve_precision("auto", torch.device("cpu")) == ("bf16" if fast else "fp32")


@pytest.mark.slow
def test_torchrun_two_nodes_on_loopback_share_one_run_dir(tmp_path: Path, text_file: Path) -> None:
    port = free_port()
    run_dir = tmp_path / "run"
    args = [f"hydra.run.dir={run_dir}", *tiny_overrides(text_file, **{"trainer.max_steps": 5})]
    logs = [tmp_path / f"node{rank}.log" for rank in (0, 1)]
    procs = [
        subprocess.Popen(
            [
                sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
                "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=lfbyte-test",
                "-m", "lfbyte.train", *args,
            ],
            cwd=REPO, env=cli_env(), stdout=open(log, "w"), stderr=subprocess.STDOUT,
        )
        for log in logs
    ]
    try:
        codes = [p.wait(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()
    outs = [log.read_text() for log in logs]
    assert codes == [0, 0], outs
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["step"] == 5
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.pth", "step_0000005.pth"]
    assert sum("parameters | data" in o for o in outs) == 1  # only global rank 0 reports
