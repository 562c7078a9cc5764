"""``python -m lfbyte.train`` under bad input and faults: one clear line, exit 2, nothing lost.

Bad command lines, unusable paths, unsafe or broken checkpoints, NaN/inf steps, a full disk
while saving, and a DDP worker killed mid-run. Each CLI case asserts the exact ``error:`` line,
the exit code and that no traceback reaches the user.
"""

from __future__ import annotations

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
from lfbyte.config import usable_cpus
from lfbyte.distributed import DistInfo, spawn
from lfbyte.errors import CheckpointError, LFByteError
from lfbyte.train import train
from lfbyte.trainer import Trainer

from .conftest import REPO, EvilPickle, assert_one_error, cli_env, compose_cfg, run_cli, tiny_overrides

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
                         "choose one of: base, gpt_base, gpt_small, gpt_tiny, small, tiny"),
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
    assert_one_error(proc, f"error: cannot write to trainer.save_path {blocker}/ckpt: Not a directory; "
                            "point it at a writable folder with free space")
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
    assert_one_error(proc, f"error: trainer.resume=auto: no checkpoint in {ckpts} could be loaded (see the "
                            "warnings above); move them away to start fresh, or give trainer.resume=<path to a "
                            "good checkpoint>")
    assert f"warning: checkpoint {ckpts / 'step_0000100.pth'} is corrupt or truncated (Unsupported operand" in proc.stderr
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


# ------------------------------------------------------------------- numerics


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
    trainer = Trainer(dict(train_cfg_plain(cfg)), tmp_path)
    _poison(trainer, {3}, where="grad")
    with pytest.raises(LFByteError) as info:
        trainer.fit()
    trainer.close()
    assert str(info.value) == (
        f"non-finite gradient norm inf at step 3; the update was not applied and the last good checkpoint (step 2) "
        f"is kept in {tmp_path / 'checkpoints'}. Lower optimizer.lr, use trainer.precision=fp32, or set "
        "trainer.on_nonfinite=skip")
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pth")
    assert ckpt["trainer_state"]["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model_state_dict"].values())


def test_skipped_nonfinite_steps_leave_weights_and_optimizer_untouched(tmp_path: Path, text_file: Path) -> None:
    flat = {"optimizer.schedule": "constant", "optimizer.warmup_steps": 0, "trainer.eval_interval": 100}
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


def test_too_many_skips_in_a_row_stop(tmp_path: Path, text_file: Path) -> None:
    cfg = train_cfg_plain(compose_cfg(*tiny_overrides(
        text_file, **{"trainer.on_nonfinite": "skip", "trainer.max_skipped_steps": 2})))
    trainer = Trainer(cfg, tmp_path)
    _poison(trainer, {2, 3, 4})
    with pytest.raises(LFByteError, match=r"^non-finite loss nan at 2 steps in a row \(up to step 3\); stopping"):
        trainer.fit()
    trainer.close()


def test_diverging_run_from_the_cli_is_one_line(tmp_path: Path, text_file: Path) -> None:
    proc = _cli(tmp_path, text_file, **{"optimizer.lr": 1e30, "optimizer.warmup_steps": 0})
    assert_one_error(proc, "error: non-finite loss nan at step 2; the update was not applied and no checkpoint had "
                            "been written yet. Lower optimizer.lr, use trainer.precision=fp32, or set "
                            "trainer.on_nonfinite=skip")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "failed"


def _nan_on_rank1(info: DistInfo, cfg: dict, run_dir: str) -> None:
    trainer = Trainer(cfg, Path(run_dir), info)
    if info.rank == 1:
        _poison(trainer, {3})
    try:
        trainer.fit()
    finally:
        trainer.close()


def test_nan_on_one_rank_stops_every_rank_at_the_same_step(tmp_path: Path, text_file: Path) -> None:
    cfg = train_cfg_plain(compose_cfg(*tiny_overrides(text_file, **{"trainer.checkpoint_interval": 2}),
                                      "distributed=ddp"))
    t0 = time.monotonic()
    with pytest.raises(LFByteError, match=r"^non-finite loss nan at step 3; .*last good checkpoint \(step 2\)"):
        spawn(_nan_on_rank1, 2, (cfg, str(tmp_path)))
    assert time.monotonic() - t0 < 120  # no rank is left waiting in a collective
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
    assert proc.returncode == 2, out + err
    assert took < 30, f"the surviving worker took {took:.0f}s to stop"
    assert "Traceback" not in out + err
    assert re.search(r"^error: a DDP worker died \(process \d terminated with signal SIGKILL\); "
                     r"the other workers were stopped$", err, flags=re.M), err
    assert json.loads((run / "metrics.json").read_text())["status"] == "failed"
    assert all(not Path(f"/proc/{w}").exists() or "Z" in Path(f"/proc/{w}/stat").read_text().split()[2]
               for w in workers)


def train_cfg_plain(cfg: object) -> dict:
    from lfbyte.config import to_plain, validate

    plain = to_plain(cfg)
    validate(plain)
    return plain
