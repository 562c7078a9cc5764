"""A run directory is a record: never overwritten, never silently mixed, never left without its outcome.

Real runs of the tiny config, through the command line where Hydra's own writes (``.hydra/``) matter.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import torch
import yaml

from lfbyte.checkpoint import load_checkpoint
from lfbyte.config import model_preset
from lfbyte.errors import ConfigError, LFByteError
from lfbyte.model import build_model
from lfbyte.report import continued_rows, read_job
from lfbyte.resources import check_memory, estimate_memory
from lfbyte.train import train

from .conftest import compose_cfg, run_cli, tiny_overrides


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder`` (hidden ones too): content hash and modification time."""
    return {str(p.relative_to(folder)): (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _cli(text_file: Path, run: Path, *args: str, **extra: object):
    over = tiny_overrides(text_file, **{"trainer.max_steps": 2, "trainer.eval_interval": 2, **extra})
    return run_cli("lfbyte.train", *over, f"hydra.run.dir={run}", *args)


def _error_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


def test_training_again_into_a_run_is_refused_and_changes_nothing(tmp_path: Path, text_file: Path) -> None:
    run = tmp_path / "run"
    assert _cli(text_file, run).returncode == 0
    before = snapshot(run)
    assert ".hydra/config.yaml" in before and "metrics.json" in before
    time.sleep(0.01)
    for extra in ({}, {"seed": 2}, {"trainer.resume": "auto", "trainer.overwrite": "true"}):
        proc = _cli(text_file, run, **extra)
        assert proc.returncode == 2, proc.stderr
        lines = _error_lines(proc)
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "already holds a run; use trainer.resume=auto to continue it, trainer.overwrite=true to move it aside" \
        in _cli(text_file, run).stderr
    assert snapshot(run) == before  # not one byte, not one timestamp


def test_overwrite_moves_the_old_run_aside_and_starts_fresh(tmp_path: Path, text_file: Path) -> None:
    run = tmp_path / "run"
    assert _cli(text_file, run).returncode == 0
    before = snapshot(run)
    proc = _cli(text_file, run, "trainer.overwrite=true", seed=2)
    assert proc.returncode == 0, proc.stderr
    [aside] = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert snapshot(aside) == before  # the old run, whole, under its new name
    assert f"moved the previous run in {run} aside to {aside}" in proc.stdout
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train_loss" in r] == [1, 2]  # one step sequence: the new run's
    assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == 2


def test_resume_with_another_model_is_refused_before_anything_changes(tmp_path: Path, text_file: Path) -> None:
    run = tmp_path / "run"
    assert _cli(text_file, run).returncode == 0
    before = snapshot(run)
    proc = _cli(text_file, run, "trainer.resume=auto", "model.embed_dim=32")
    assert proc.returncode == 2
    assert _error_lines(proc) == [f"error: trainer.resume: {run / 'checkpoints' / 'last.pth'} was trained with a "
                                  "different model (model.embed_dim: 64 -> 32); resume with the model settings it "
                                  "was trained with, or start a new run"]
    assert snapshot(run) == before  # config.yaml, .hydra/ and metrics.json as they were: the run still loads
    proc = run_cli("lfbyte.generate", f"run_dir={run}", "max_length=4", "num_threads=1")
    assert proc.returncode == 0, proc.stderr


def test_changed_settings_need_allow_changes_and_are_recorded(tmp_path: Path, text_file: Path) -> None:
    run = tmp_path / "run"
    base = {"trainer.max_steps": 4, "trainer.stop_at_step": 2, "trainer.eval_interval": 2}
    train(compose_cfg(*tiny_overrides(text_file, **base)), run)
    before = snapshot(run)
    resume = {**base, "trainer.stop_at_step": None, "trainer.resume": "auto"}
    changed = {"optimizer.lr": 1e-3, "trainer.batch_size": 2, "data.val_fraction": 0.2}
    with pytest.raises(ConfigError) as info:
        train(compose_cfg(*tiny_overrides(text_file, **resume, **changed)), run)
    assert "was trained with other settings (data.val_fraction: 0.05 -> 0.2, optimizer.lr: 0.002 -> 0.001, " \
           "trainer.batch_size: 4 -> 2); resume with the same ones, or set trainer.allow_changes=true" in str(info.value)
    assert snapshot(run) == before
    result = train(compose_cfg(*tiny_overrides(text_file, **resume, **changed, **{"trainer.allow_changes": "true"})),
                   run)
    assert result["status"] == "completed" and result["step"] == 4
    history = [json.loads(line) for line in (run / "config_history.jsonl").read_text().splitlines()]
    assert [h["segment"] for h in history] == [1, 2]
    assert history[0]["changes"] == {} and history[0]["config"]["optimizer"]["lr"] == 0.002
    assert history[1]["changes"]["optimizer.lr"] == [0.002, 0.001]
    assert history[1]["changes"]["trainer.batch_size"] == [4, 2]
    assert history[1]["config"]["optimizer"]["lr"] == 0.001
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    markers = [r for r in rows if r.get("event") == "resume"]
    assert markers == [{"step": 2, "event": "resume", "checkpoint": str(run / "checkpoints" / "last.pth")}]
    steps = [r["step"] for r in continued_rows(rows) if "train_loss" in r]
    assert steps == [1, 2, 3, 4]


def test_a_resume_marker_drops_the_steps_the_crash_lost(tmp_path: Path) -> None:
    rows = [{"step": s, "val_bpb": 5.0 - s / 10} for s in (1, 2, 3, 4, 5)]
    rows += [{"step": 3, "event": "resume"}] + [{"step": s, "val_bpb": 4.0 - s / 10} for s in (4, 5, 6)]
    assert [(r["step"], r["val_bpb"]) for r in continued_rows(rows)] == [
        (1, 4.9), (2, 4.8), (3, 4.7), (4, 3.6), (5, 3.5), (6, 3.4)]
    job = tmp_path / "0_x=1"
    job.mkdir()
    (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [r["step"] for r in read_job(job).curve] == [1, 2, 3, 4, 5, 6]


def test_a_sweep_into_a_folder_that_holds_runs_is_refused(tmp_path: Path, text_file: Path) -> None:
    sweep = tmp_path / "sweep"
    over = tiny_overrides(text_file, **{"trainer.max_steps": 1, "trainer.eval_interval": 1})
    args = ("-m", *over, "seed=1,2", f"hydra.sweep.dir={sweep}")
    assert run_cli("lfbyte.train", *args).returncode == 0
    before = snapshot(sweep)
    proc = run_cli("lfbyte.train", *args)
    assert proc.returncode == 2
    assert _error_lines(proc) == [f"error: the sweep folder {sweep} already holds runs; use trainer.resume=auto to "
                                  "continue each job, trainer.overwrite=true to move the folder aside, or another "
                                  "hydra.sweep.dir"]
    assert snapshot(sweep) == before
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    proc = run_cli("lfbyte.train", *args, "trainer.resume=auto")  # the same jobs (resume is not in their names)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p for p in sweep.iterdir() if p.is_dir()) == jobs
    for job in jobs:
        rows = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
        assert {"step": 1, "event": "resume", "checkpoint": str(job / "checkpoints" / "last.pth")} in rows


def test_a_failure_during_training_keeps_the_training_and_says_failed(
    tmp_path: Path, text_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure that is not the weights' fault (here the evaluation at step 3 raises) saves what training
    reached; metrics.json says failed and why; resume continues from there."""
    from lfbyte.trainer import Trainer

    evaluate = Trainer.evaluate

    def failing(self: Trainer) -> dict:
        if self.step == 3:
            raise RuntimeError("the evaluation broke")
        return evaluate(self)

    monkeypatch.setattr(Trainer, "evaluate", failing)
    run = tmp_path / "run"
    with pytest.raises(RuntimeError):
        train(compose_cfg(*tiny_overrides(text_file)), run)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["step"] == 3
    assert metrics["error"].startswith("RuntimeError: the evaluation broke; training up to step 3 is saved in ")
    assert load_checkpoint(run / "checkpoints" / "last.pth")["trainer_state"]["step"] == 3
    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    result = train(compose_cfg(*tiny_overrides(text_file, **{"trainer.resume": "auto"})), run)
    assert result["status"] == "completed" and result["step"] == 6


def test_sampling_that_would_fail_fails_before_the_first_step(
    tmp_path: Path, text_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lfbyte import generate
    from lfbyte.generate import GenerationError

    def broken(*_args: object, **_kwargs: object) -> str:
        raise GenerationError("this model cannot be sampled")

    monkeypatch.setattr(generate, "generate_text", broken)
    run = tmp_path / "run"
    with pytest.raises(LFByteError, match="sampling at evaluation fails: this model cannot be sampled; set "
                                          "trainer.sample_length=0 to train without samples"):
        train(compose_cfg(*tiny_overrides(text_file, **{"trainer.sample_length": 8})), run)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["step"] == 0  # nothing was trained, and nothing lost


def test_a_one_byte_context_trains_and_samples(tmp_path: Path, text_file: Path) -> None:
    """seq_len=1 used to train for the whole budget and then fail at the first sample (keep = seq_len // 2 = 0)."""
    result = train(compose_cfg(*tiny_overrides(text_file, **{"model.seq_len": 1, "trainer.sample_length": 8})),
                   tmp_path / "run")
    assert result["status"] == "completed"
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert samples and all(len(s["text"].encode("utf-8", "surrogatepass")) >= 1 for s in samples)


# ----------------------------------------------------------------------------------------------- memory


def _measured_activations(model_cfg: dict, batch: int) -> int:
    """Bytes autograd really saves for backward in one forward on the CPU (weights excluded)."""
    torch.manual_seed(0)
    model = build_model(model_cfg)
    own = {id(p) for p in model.parameters()}
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        if id(t) not in own and not (t._base is not None and id(t._base) in own):
            saved += t.numel() * t.element_size()
        return t

    x = torch.randint(0, 256, (batch, model_cfg["seq_len"]))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x, x)
    return saved


@pytest.mark.parametrize("preset", ["tiny", "mini", "gpt_tiny"])
def test_the_memory_estimate_counts_what_training_holds(preset: str) -> None:
    model_cfg = model_preset(preset)
    cfg = {"model": model_cfg, "trainer": {"batch_size": 4, "device": "cpu"}, "distributed": {"strategy": "none"}}
    est = estimate_memory(cfg)
    assert est.parameters == build_model(model_cfg).num_parameters()
    assert est.weights == 16 * est.parameters  # fp32 weights, gradients, two AdamW moments
    real = _measured_activations(model_cfg, 4)
    # LFByteTransformer runs the same ops on meta as on the CPU (MoE: an even load vs the real routing);
    # the GPT's attention takes the math path on meta, which saves more than the CPU's fused kernel
    assert real * 0.9 <= est.activations <= real * (2.0 if preset.startswith("gpt") else 1.1), (est, real)


@pytest.mark.parametrize("override", [{"trainer": {"batch_size": 10**8}}, {"model": {"seq_len": 10**9}},
                                      {"trainer": {"accumulation_steps": 16575622260977288}},
                                      {"model": {"embed_dim": 2**20, "num_heads": 1}},
                                      {"model": {"num_layers": 10**9}}, {"model": {"num_experts": 10**8}},
                                      {"model": {"embed_dim": 2**40, "num_heads": 1}}])
def test_terabyte_configs_are_refused_in_one_line_without_allocating(override: dict) -> None:
    cfg = {"model": model_preset("tiny"), "trainer": {"batch_size": 4, "device": "cpu"},
           "distributed": {"strategy": "none"}}
    for group, values in override.items():
        cfg[group] = {**cfg[group], **values}
    with pytest.raises(ConfigError) as info:
        check_memory(cfg)
    message = str(info.value)
    assert "\n" not in message and ("needs about" in message or "more memory than can be represented" in message)
    assert check_memory({**cfg, "trainer": {**cfg["trainer"], "check_memory": False}}) is None


def test_keys_older_runs_recorded_but_nothing_read_are_not_a_change() -> None:
    """data.kind and optimizer.name were removed (never read): resuming a run that recorded them needs no
    allow_changes, while a real change beside them is still reported."""
    from lfbyte.rundir import config_changes

    new = {"data": {"path": None}, "optimizer": {"lr": 1e-3}}
    old = {"data": {"kind": "text", "path": None}, "optimizer": {"name": "adamw", "lr": 1e-3}}
    assert config_changes(old, new) == {}
    assert config_changes(old, {**new, "optimizer": {"lr": 2e-3}}) == {"optimizer.lr": [1e-3, 2e-3]}


@pytest.mark.parametrize(("key", "value"), [("short_conv", 4), ("channel_decay", True), ("delta_rule", True)])
def test_a_run_from_before_a_model_key_resumes_and_setting_it_makes_another_model(
    tmp_path: Path, key: str, value: object
) -> None:
    from lfbyte.checkpoint import save_checkpoint
    from lfbyte.config import to_plain
    from lfbyte.rundir import check_resume

    cfg = to_plain(compose_cfg("model=tiny", "trainer.device=cpu"))
    old = json.loads(json.dumps(cfg))
    default = old["model"].pop(key)  # what every run recorded before the key existed
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(old))
    model = build_model(old["model"])
    path = save_checkpoint({"model_state_dict": model.state_dict(), "config": old, "trainer_state": {"step": 1}},
                           run / "checkpoints", step=1, keep_last=1)
    same = {**cfg, "trainer": {**cfg["trainer"], "resume": str(path)}}
    assert not [k for k in check_resume(same, run) if k.startswith("model.")]  # the same model
    other = {**same, "model": {**cfg["model"], key: value}}
    with pytest.raises(ConfigError, match=rf"different model \(model.{key}: {default} -> {value}"):
        check_resume(other, run)
