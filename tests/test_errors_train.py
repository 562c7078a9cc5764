"""``python -m lfbyte.train`` under bad input and faults: one clear line, exit 2, nothing lost.

Bad command lines, unusable paths, unsafe or broken checkpoints, NaN/inf steps, a full disk
while saving, and a DDP worker killed mid-run. Each CLI case asserts the exact ``error:`` line,
the exit code and that no traceback reaches the user.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lfbyte.checkpoint import load_checkpoint
from lfbyte.cli import check_overrides
from lfbyte.config import MAX_SEED, to_plain, usable_cpus, validate
from lfbyte.distributed import DistInfo, spawn
from lfbyte.errors import CheckpointError, ConfigError, DataError, LFByteError, print_error
from lfbyte.train import train
from lfbyte.trainer import Trainer

from .conftest import OPTUNA, REPO, EvilPickle, assert_one_error, cli_env, compose_cfg, run_cli, tiny_overrides

KEYS_HINT = "python -m lfbyte.train --cfg job prints every key"


def _cli(tmp_path: Path, text_file: Path, *args: str, **extra: object) -> subprocess.CompletedProcess:
    return run_cli("lfbyte.train", f"hydra.run.dir={tmp_path / 'run'}", *tiny_overrides(text_file, **extra), *args)


# ---------------------------------------------------------------- command line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["trainer.batchsize=4"],
         f"error: trainer.batchsize is not a known option (did you mean trainer.batch_size?); {KEYS_HINT}"),
        (["+trainer.learning_rate=1"], f"error: trainer.learning_rate is not a known option; {KEYS_HINT}"),
        (["model=smal"], "error: model=smal is not an option (did you mean small?); "
                         "choose one of: base, gpt_base, gpt_mini, gpt_small, gpt_tiny, mini, small, tiny"),
        (["trainer.batch_size=[1"], "error: cannot parse the override 'trainer.batch_size=[1': no viable alternative "
                                    "at input '[1' (quote values with spaces, commas or brackets: "
                                    "key=\"'a, b'\")"),
        (["trainer.on_nonfinite=maybe"], "error: trainer.on_nonfinite='maybe' must be one of ['stop', 'skip']"),
        (["model.dropout=1.5"], "error: model.dropout=1.5 must be in [0, 1)"),
        (["model.seq_len=4096"], None),  # longer than the corpus split allows: checked below
    ],
)
def test_bad_command_lines_are_one_line(tmp_path: Path, text_file: Path, args: list[str], expected: str | None) -> None:
    if expected is None:  # a window longer than the validation split
        proc = _cli(tmp_path, text_file, *args, **{"data.val_fraction": 0.01})
        assert_one_error(proc, re.compile(
            rf"error: corpus '{re.escape(str(text_file))}' has [\d,]+ tokens; with data.val_fraction=0.01 each split "
            r"needs at least seq_len\+1=4097: add data, lower model.seq_len or change data.val_fraction"))
        return
    proc = _cli(tmp_path, text_file, *args)
    assert_one_error(proc, expected)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_bad_attention_dropout_is_one_line(tmp_path: Path, text_file: Path) -> None:
    proc = _cli(tmp_path, text_file, "model.attn_dropout=1.5", model="gpt_tiny")
    assert_one_error(proc, "error: model.attn_dropout=1.5 must be in [0, 1), or null for model.dropout")


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("seed=-1", f"seed=-1 must be an integer in 0..{MAX_SEED}"),
        ("optimizer.betas=[2,3]", "optimizer.betas=[2, 3] must be two numbers in [0, 1), e.g. [0.9, 0.95]"),
        ("optimizer.eps=-1", "optimizer.eps=-1 must be > 0"),
        ("trainer.num_threads=-1", f"trainer.num_threads=-1 must be null (torch's default) or an integer in "
                                   f"1..{usable_cpus()} (this machine's cores)"),
        ("trainer.stop_at_step=abc", "trainer.stop_at_step='abc' must be null or an integer >= 1"),
        ("trainer.peak_tflops=abc", "trainer.peak_tflops='abc' must be null or TFLOP/s > 0"),
        *[(f"trainer.sample_length={v}", f"trainer.sample_length={v} must be an integer in 0..16384 (0: no samples); "
           "longer texts: python -m lfbyte.generate run_dir=... max_length=N") for v in (-5, 16385)],
        *[(f"trainer.eval_scored={v}", f"trainer.eval_scored={v} must be null or an integer in 1..model.seq_len (64): "
           "the bytes scored at the end of each validation window") for v in (0, 65)],
        ("trainer.compile=maybe", "trainer.compile='maybe' must be true or false"),
        ("model.channel_decay=maybe", "model.channel_decay='maybe' must be true or false"),
        ("model.mixer_kernel=fla model.channel_decay=true",
         "model.channel_decay=true runs on the pure-torch mixer only (fla's simple-GLA kernels take one decay per "
         "head): use model.mixer_kernel=auto or torch"),
        ("model.delta_rule=true model.channel_decay=true",
         "model.delta_rule (in any layer) takes one decay per head and runs on the pure-torch mixer: use "
         "model.channel_decay=false and model.mixer_kernel=auto or torch"),
        ("model.delta_rule=[1] model.mixer_kernel=fla",
         "model.delta_rule (in any layer) takes one decay per head and runs on the pure-torch mixer: use "
         "model.channel_decay=false and model.mixer_kernel=auto or torch"),
        *[(f"model.delta_rule={v}", f"model.delta_rule={shown} must be true, false or a list of 0-based layer "
           "indices in increasing order below num_layers=2 (e.g. model.delta_rule=[3]: the delta rule in the last of "
           "four layers only)") for v, shown in (("[2]", "[2]"), ("[1,0]", "[1, 0]"), ("last", "'last'"), ("1", "1"))],
        ("distributed.backend=bogus", "distributed.backend='bogus' must be one of ['auto', 'gloo', 'nccl']"),
        ("distributed.master_port=99999",
         "distributed.master_port=99999 must be null (a free port) or an integer in 1..65535"),
        ("trainer.max_skipped_steps=0", "trainer.max_skipped_steps=0 must be an integer >= 1"),
        # a step of 10**8 micro-batches outlives max_time (and its starts' list held ~100 bytes of Python per one)
        ("trainer.accumulation_steps=4097", "trainer.accumulation_steps=4097 must be in 1..4096: max_time, a stop "
         "signal and checkpoints wait for the end of an optimizer step; for a larger step raise trainer.batch_size "
         "or add processes"),
        # decoding looped over 65,536 taps per byte (a hang)
        *[(f"model.{key}=1025", f"model.{key}=1025 must be at most 1024 bytes (the recipes use 4; taps reaching past "
           "model.seq_len only ever see zeros)") for key in ("conv_size", "short_conv")],
    ],
)
def test_every_value_is_checked_before_data_is_read(override: str, line: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate(to_plain(compose_cfg("model=tiny", *override.split())))
    assert str(info.value) == line


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["-m", "model=tiny", "trainer.batch_size=2,0"],
         "in the sweep job with trainer.batch_size=0: trainer.batch_size=0 must be an integer >= 1"),
        (["-m", "model=tiny", "model.embed_dim=32,64", "model.num_heads=2,3"],
         "in the sweep job with model.embed_dim=32 model.num_heads=3: model.embed_dim=32 must be divisible by "
         "model.num_heads=3"),
        (["-m", "model=tiny,smal"], "model=smal is not an option (did you mean small?); "
                                    "choose one of: base, gpt_base, gpt_mini, gpt_small, gpt_tiny, mini, small, tiny"),
        pytest.param(["hparams_search=optuna", "model.num_layers=choice(2,0)"],  # the config itself says MULTIRUN
                     "in the sweep job with model.num_layers=0: model.num_layers=0 must be an integer >= 1",
                     marks=OPTUNA),
        (["model.embed_dim=64,128"], "Ambiguous value for argument 'model.embed_dim=64,128'; 1. To use it as a list, "
                                     "use key=[value1,value2]; 2. To use it as string, quote the value: "
                                     "key='value1,value2'; 3. To sweep over it, add --multirun to your command line"),
    ],
)
def test_every_value_of_a_sweep_is_checked_before_the_first_job(argv: list[str], line: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_overrides("train", argv, check=validate)
    assert str(info.value) == line


@OPTUNA
def test_an_optuna_search_takes_its_ranges_from_the_command_line() -> None:
    check_overrides("train", ["hparams_search=optuna", "model.num_layers=choice(1,2)"], check=validate)


def test_sweeps_that_the_config_itself_declares_still_take_values_from_the_command_line() -> None:
    check_overrides("train", ["experiment=dims_sweep", "seed=1,2"], check=validate)
    check_overrides("train", ["-m", "model=tiny,small", "optimizer.lr=1e-3,2e-3"], check=validate)


def test_a_bad_sweep_job_stops_the_sweep_before_any_job_runs(tmp_path: Path, text_file: Path) -> None:
    proc = run_cli("lfbyte.train", "-m", f"hydra.sweep.dir={tmp_path / 'sweep'}", *tiny_overrides(text_file),
                   "trainer.batch_size=2,0")
    assert_one_error(proc, "error: in the sweep job with trainer.batch_size=0: trainer.batch_size=0 must be an "
                           "integer >= 1")
    assert not (tmp_path / "sweep").exists()


def test_a_required_value_left_unset_names_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        to_plain(compose_cfg("data=bytes"))  # bytes has no default corpus
    assert str(info.value) == "data.path must be set: add data.path=... to the command line"


def test_several_problems_are_one_line_each(tmp_path: Path, text_file: Path) -> None:
    proc = _cli(tmp_path, text_file, "model.top_k=9", "trainer.batch_size=0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: model.top_k=9 must be <= model.num_experts=2",
        "error: trainer.batch_size=0 must be an integer >= 1",
    ]


def test_more_workers_than_cores_or_a_missing_gpu_is_refused_before_spawning(tmp_path: Path, text_file: Path) -> None:
    n = usable_cpus() + 1
    proc = _cli(tmp_path, text_file, "distributed=ddp", f"distributed.nproc_per_node={n}")
    assert_one_error(proc, f"error: distributed.nproc_per_node={n} but this machine has {n - 1} CPU core(s); "
                            f"CPU workers need a core each: use distributed.nproc_per_node={n - 1} or less")
    if not torch.cuda.is_available():
        proc = _cli(tmp_path, text_file, **{"trainer.device": "cuda", "trainer.precision": "bf16"})
        assert_one_error(proc, "error: trainer.device=cuda but no GPU is visible; use trainer.device=cpu")


def test_unwritable_output_paths_fail_before_training(tmp_path: Path, text_file: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    proc = run_cli("lfbyte.train", f"hydra.run.dir={blocker}/run", *tiny_overrides(text_file))
    assert_one_error(proc, f"error: hydra.run.dir={blocker}/run cannot be created: {blocker} is a file, "
                            "not a folder; choose another path")
    proc = _cli(tmp_path, text_file, f"trainer.save_path={blocker}/ckpt")
    assert_one_error(proc, f"error: trainer.save_path={blocker}/ckpt cannot be created: {blocker} is a file, "
                            "not a folder; choose another path")
    assert blocker.read_text() == "not a folder"
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before the first step


# ----------------------------------------------------------------- checkpoints


def test_a_malicious_checkpoint_is_refused_and_never_runs(tmp_path: Path, text_file: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"model_state_dict": {}, "payload": EvilPickle(marker)}, evil)
    proc = _cli(tmp_path, text_file, f"trainer.resume={evil}")
    assert_one_error(proc, re.compile(
        rf"error: refusing to load {re.escape(str(evil))}: it contains objects other than tensors and plain data "
        r"\(.*system.*\); only load checkpoints you trust, re-saved as state dicts"))
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_a_file_that_is_not_a_checkpoint_is_named_as_such(tmp_path: Path, text_file: Path) -> None:
    proc = _cli(tmp_path, text_file, f"trainer.resume={text_file}")
    assert_one_error(proc, f"error: {text_file} is not a PyTorch checkpoint file; give a .pth written by lfbyte")


def test_truncated_checkpoints_fall_back_to_the_previous_good_one(
    tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture
) -> None:
    extra = {"trainer.max_steps": 6, "trainer.checkpoint_interval": 2, "trainer.eval_interval": 6,
             "model.dropout": 0.1}
    full = train(compose_cfg(*tiny_overrides(text_file, **extra)), tmp_path / "full")
    run = tmp_path / "cut"
    train(compose_cfg(*tiny_overrides(text_file, **extra)), run)
    ckpts = run / "checkpoints"
    newest = ckpts / "step_0000006.pth"
    size = newest.stat().st_size
    with open(newest, "r+b") as f:  # last.pth is a hard link to it: both are now torn
        f.truncate(size // 2)
    capsys.readouterr()
    resumed = train(compose_cfg(*tiny_overrides(text_file, **extra, **{"trainer.resume": "auto"})), run)
    err = capsys.readouterr().err
    assert f"warning: checkpoint {ckpts / 'last.pth'} is corrupt or truncated" in err
    assert f"warning: checkpoint {newest} is corrupt or truncated" in err
    assert resumed["resumed_from"] == str(ckpts / "step_0000004.pth") and resumed["step"] == 6
    assert resumed["val_loss"] == full["val_loss"]  # exact resume from step 4 redoes steps 5-6 identically
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pth")["model_state_dict"]
    b = load_checkpoint(ckpts / "last.pth")["model_state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)


def test_resume_auto_with_only_unloadable_checkpoints_refuses_to_overwrite_them(tmp_path: Path, text_file: Path) -> None:
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "step_0000100.pth").write_bytes(b"\x80\x02 torn")
    proc = _cli(tmp_path, text_file, **{"trainer.resume": "auto"})
    assert_one_error(proc, f"error: trainer.resume=auto: no checkpoint in {ckpts} could be loaded (the newest: "
                            f"checkpoint {ckpts / 'step_0000100.pth'} is corrupt or truncated (Unsupported operand "
                            "32)); move them away to start fresh, or give trainer.resume=<path to a good checkpoint>")
    assert (ckpts / "step_0000100.pth").read_bytes() == b"\x80\x02 torn"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_0000100.pth"]


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path: Path, text_file: Path) -> None:
    run = tmp_path / "run"
    train(compose_cfg(*tiny_overrides(text_file, **{"trainer.max_steps": 4})), run)
    before = (run / "checkpoints" / "last.pth").read_bytes()

    def small_disk() -> None:  # files may not grow past 256 KB: every write beyond fails with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))

    proc = subprocess.run(
        [sys.executable, "-m", "lfbyte.train", f"hydra.run.dir={run}",
         *tiny_overrides(text_file, **{"trainer.max_steps": 8, "trainer.resume": "auto"})],
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300, preexec_fn=small_disk,
    )
    assert_one_error(proc, f"error: could not write checkpoint {run / 'checkpoints' / 'step_0000008.pth'}: File too "
                            "large; free disk space or set trainer.save_path to a writable folder")
    assert "resumed from" in proc.stdout
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["last.pth", "step_0000004.pth"]  # no torn temp file left behind
    assert (run / "checkpoints" / "last.pth").read_bytes() == before
    assert load_checkpoint(run / "checkpoints" / "last.pth")["trainer_state"]["step"] == 4
    assert json.loads((run / "metrics.json").read_text())["status"] == "failed"


def test_disk_full_while_logging_metrics_stops_with_the_reason(tmp_path: Path, text_file: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("{}\n" * 50_000)  # 150 KB already there: the next row will not fit

    def full_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (150_010, 150_010))

    # resume=auto: the folder holds a run's log already (a fresh start there needs resume or overwrite)
    proc = subprocess.run([sys.executable, "-m", "lfbyte.train", f"hydra.run.dir={run}", "trainer.resume=auto",
                           *tiny_overrides(text_file)],
                          cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300, preexec_fn=full_disk)
    assert_one_error(proc, f"error: cannot write {run / 'metrics.jsonl'}: File too large; free disk space, then "
                           "resume with trainer.resume=auto")
    torn = (run / "metrics.jsonl").read_text().splitlines()[-1]
    assert torn != "{}"  # the disk filled mid-row
    # space freed, the run goes again: its rows start on a line of their own, not fused to the torn one
    train(compose_cfg(*tiny_overrides(text_file, **{"trainer.max_steps": 2, "trainer.resume": "auto"})), run)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert lines[50_000] == torn
    # the restart marker (no checkpoint: from step 0), train rows 1, 2, then the eval at 2
    assert [json.loads(r)["step"] for r in lines[50_001:]] == [0, 1, 2, 2]
    assert json.loads(lines[50_001]) == {"step": 0, "event": "resume", "checkpoint": None}


# ------------------------------------------------------------------- numerics


def train_cfg_plain(cfg: object) -> dict:
    """What ``train()`` hands a Trainer: the resolved, validated config."""
    plain = to_plain(cfg)
    validate(plain)
    return plain


def _poison(trainer: Trainer, steps: set[int], where: str = "loss") -> None:
    """Make the given (1-based) training steps non-finite: the loss (via the embedding) or only a gradient."""
    if where == "loss":
        def hook(module: torch.nn.Module, _inp: object, out: torch.Tensor) -> torch.Tensor:
            return out * float("nan") if module.training and trainer.step + 1 in steps else out

        trainer.model.embed.register_forward_hook(hook)
    else:
        p = next(trainer.model.parameters())
        p.register_hook(lambda g: g * float("inf") if trainer.step + 1 in steps else g)


def test_nonfinite_gradient_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path: Path, text_file: Path) -> None:
    cfg = compose_cfg(*tiny_overrides(text_file, **{"trainer.checkpoint_interval": 2}))
    trainer = Trainer(train_cfg_plain(cfg), tmp_path)
    _poison(trainer, {3}, where="grad")
    with pytest.raises(LFByteError) as info:
        trainer.fit()
    trainer.close()
    assert str(info.value) == (
        f"non-finite gradient norm inf at step 3; the update was not applied and the last good checkpoint (step 2) "
        f"is kept in {tmp_path / 'checkpoints'}. Lower optimizer.lr, or set "
        "trainer.on_nonfinite=skip")
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pth")
    assert ckpt["trainer_state"]["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model_state_dict"].values())


# log_interval 5: the host reads the device's verdicts several steps late (the step itself never waits);
# everything below must come out the same as when it reads after every step
LOG_INTERVALS = pytest.mark.parametrize("log_interval", [1, 5], ids=["read-every-step", "read-later"])


@LOG_INTERVALS
def test_skipped_nonfinite_steps_leave_weights_and_optimizer_untouched(tmp_path: Path, text_file: Path,
                                                                       log_interval: int) -> None:
    flat = {"optimizer.schedule": "constant", "optimizer.warmup_steps": 0, "trainer.eval_interval": 100,
            "trainer.log_interval": log_interval}
    two = train(compose_cfg(*tiny_overrides(text_file, **flat, **{"trainer.max_steps": 2})), tmp_path / "two")
    cfg = train_cfg_plain(compose_cfg(*tiny_overrides(
        text_file, **flat, **{"trainer.max_steps": 4, "trainer.on_nonfinite": "skip"})))
    trainer = Trainer(cfg, tmp_path / "skip")
    _poison(trainer, {3, 4})
    result = trainer.fit()
    trainer.close()
    assert result["status"] == "completed" and result["step"] == 4 and result["skipped_steps"] == 2
    a = load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pth")
    b = load_checkpoint(tmp_path / "skip" / "checkpoints" / "last.pth")
    for k, v in a["model_state_dict"].items():
        torch.testing.assert_close(b["model_state_dict"][k], v, atol=0, rtol=0)
    assert [s["step"] for s in b["optimizer_state_dict"]["state"].values()] == [
        s["step"] for s in a["optimizer_state_dict"]["state"].values()]  # Adam did 2 updates, not 4
    rows = [json.loads(r) for r in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in rows if "skipped_steps" in r] == [1, 2]
    assert two["step"] == 2


@LOG_INTERVALS
def test_too_many_skips_in_a_row_stop(tmp_path: Path, text_file: Path, log_interval: int) -> None:
    cfg = train_cfg_plain(compose_cfg(*tiny_overrides(
        text_file, **{"trainer.on_nonfinite": "skip", "trainer.max_skipped_steps": 2,
                      "trainer.log_interval": log_interval})))
    trainer = Trainer(cfg, tmp_path)
    _poison(trainer, {2, 3, 4})
    with pytest.raises(LFByteError) as info:
        trainer.fit()
    trainer.close()
    assert str(info.value) == ("non-finite loss nan at 2 steps in a row (up to step 3); stopping, and no checkpoint "
                               "had been written yet. Lower optimizer.lr")


@LOG_INTERVALS
def test_fp16_scaler_skips_are_counted_and_stop_when_they_never_end(tmp_path: Path, text_file: Path,
                                                                    log_interval: int) -> None:
    """fp16 overflow is the GradScaler's to handle, but gradients that stay non-finite must not go unnoticed."""
    cfg = train_cfg_plain(compose_cfg(*tiny_overrides(
        text_file, **{"trainer.precision": "fp16", "trainer.max_steps": 20, "trainer.max_skipped_steps": 4,
                      "trainer.checkpoint_interval": 2, "trainer.log_interval": log_interval})))
    trainer = Trainer(cfg, tmp_path)
    _poison(trainer, set(range(3, 21)), where="grad")
    with pytest.raises(LFByteError) as info:
        trainer.fit()
    trainer.close()
    assert str(info.value) == (
        f"non-finite gradient norm inf at 4 steps in a row (up to step 6); stopping, and the last good checkpoint "
        f"(step 4) is kept in {tmp_path / 'checkpoints'}. Lower optimizer.lr or use trainer.precision=fp32 "
        "(this run is fp16)")
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pth")
    assert ckpt["scaler_state_dict"]["scale"] == 65536.0 / 2**2  # halved at the skips of steps 3 and 4
    assert trainer.scaler.get_scale() <= 65536.0 / 2**4  # and at each later one, on the device
    assert all(torch.isfinite(v).all() for v in ckpt["model_state_dict"].values())


def test_a_nonfinite_micro_batch_poisons_the_whole_accumulated_step(tmp_path: Path, text_file: Path) -> None:
    cfg = train_cfg_plain(compose_cfg(*tiny_overrides(
        text_file, **{"trainer.accumulation_steps": 2, "trainer.on_nonfinite": "skip", "trainer.max_steps": 3})))
    trainer = Trainer(cfg, tmp_path)
    calls = {"n": 0}

    def second_micro_batch_of_step_2(module: torch.nn.Module, _inp: object, out: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return out
        calls["n"] += 1
        return out * float("nan") if calls["n"] == 4 else out  # step 2 = micro-batches 3 and 4

    trainer.model.embed.register_forward_hook(second_micro_batch_of_step_2)
    result = trainer.fit()
    trainer.close()
    assert result["skipped_steps"] == 1 and result["step"] == 3
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_diverging_run_from_the_cli_is_one_line(tmp_path: Path, text_file: Path) -> None:
    proc = _cli(tmp_path, text_file, **{"optimizer.lr": 1e30, "optimizer.warmup_steps": 0})
    assert_one_error(proc, "error: non-finite loss nan at step 2; the update was not applied and no checkpoint had "
                            "been written yet. Lower optimizer.lr, or set "
                            "trainer.on_nonfinite=skip")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "failed"


def _nan_on_rank1(info: DistInfo, cfg: dict, run_dir: str) -> None:
    trainer = Trainer(cfg, Path(run_dir), info)
    if info.rank == 1:
        _poison(trainer, {3})
    try:
        trainer.fit()
    except LFByteError as e:  # each rank says why it stopped: both must stop on their own, at the same step
        (Path(run_dir) / f"rank{info.rank}.stopped").write_text(str(e))
        raise
    finally:
        trainer.close()


def test_nan_on_one_rank_stops_every_rank_at_the_same_step(tmp_path: Path, text_file: Path) -> None:
    cfg = train_cfg_plain(compose_cfg(*tiny_overrides(text_file, **{"trainer.checkpoint_interval": 2}),
                                      "distributed=ddp"))
    t0 = time.monotonic()
    with pytest.raises(LFByteError, match=r"^non-finite loss nan at step 3; .*last good checkpoint \(step 2\)"):
        spawn(_nan_on_rank1, 2, (cfg, str(tmp_path)))
    assert time.monotonic() - t0 < 120  # no rank is left waiting in a collective
    assert (tmp_path / "rank0.stopped").read_text() == (tmp_path / "rank1.stopped").read_text()
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pth")["trainer_state"]["step"] == 2


# ------------------------------------------------------------------------ DDP


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def test_a_killed_ddp_worker_stops_the_run_promptly_with_the_cause(tmp_path: Path, text_file: Path) -> None:
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lfbyte.train", f"hydra.run.dir={run}", "distributed=ddp",
         *tiny_overrides(text_file, **{"trainer.max_steps": 100_000, "trainer.eval_interval": 1000})],
        cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    while not ((run / "metrics.jsonl").exists() and len((run / "metrics.jsonl").read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    workers = [c for c in _children(proc.pid) if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
    assert len(workers) == 2
    os.kill(workers[-1], signal.SIGKILL)
    t0 = time.monotonic()
    out, err = proc.communicate(timeout=120)
    took = time.monotonic() - t0
    print(f"a DDP worker SIGKILLed: the CLI exited {proc.returncode} after {took:.2f} s")  # README figure
    assert proc.returncode == 2, out + err
    assert took < 30, f"the surviving worker took {took:.0f}s to stop"
    assert "Traceback" not in out + err
    assert re.search(r"^error: a training worker died \(process \d terminated with signal SIGKILL\); "
                     r"the other workers were stopped$", err, flags=re.M), err
    assert json.loads((run / "metrics.json").read_text())["status"] == "failed"
    assert all(not Path(f"/proc/{w}").exists() or "Z" in Path(f"/proc/{w}/stat").read_text().split()[2]
               for w in workers)


def test_a_config_name_with_line_breaks_stays_one_line() -> None:
    """Hydra's 'Could not find' for a name holding characters that split lines (NEL, FS: a random every-key draw)."""
    from lfbyte.cli import _missing_option

    msg = "Could not find 'model/a\x85\x1cb'\n\nAvailable options in 'model':\n\ttiny\nConfig search path:"
    assert _missing_option(msg).splitlines() == ["model='a\\x85\\x1cb' is not an option; choose one of: tiny"]


def test_any_message_splits_into_lines_at_newlines_only() -> None:
    """Every LFByteError escapes the other characters str.splitlines breaks at, wherever a user's value is echoed."""
    e = DataError("data.path=/a\rb\x0bc\x0cd\x1ce\x1df\x1eg\x85h\u2028i\u2029j does not exist\nsecond line")
    assert str(e).splitlines() == ["data.path=/a\\rb\\x0bc\\x0cd\\x1ce\\x1df\\x1eg\\x85h\\u2028i\\u2029j does not exist",
                                   "second line"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        print_error(e)
    assert err.getvalue().count("error: ") == 2 and len(err.getvalue().splitlines()) == 2
