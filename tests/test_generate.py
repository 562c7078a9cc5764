"""Generation: cached decoding equals the full forward pass (sliding included), sampling,
UTF-8 safety, reproducibility, and load_run on real (tiny) training runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from lfbyte import GPT, LFByteTransformer, generate_text, load_run
from lfbyte.checkpoint import save_checkpoint
from lfbyte.errors import CheckpointError, ConfigError
from lfbyte.generate import (
    Decoder,
    GenerationError,
    generate_bytes,
    sample_byte,
    stream_text,
)
from lfbyte.model import SEPARATOR, AdaptiveLinear
from lfbyte.runs import Run, find_runs
from lfbyte.train import train

from .conftest import compose_cfg, flat_defaults, run_cli, tiny_overrides

SMALL = dict(seq_len=32, embed_dim=32, num_layers=2, num_heads=2, adapt_dim=8, adapt_rank=4, chunk_size=8)


def _models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    models = {
        "lfbyte-moe": LFByteTransformer(**SMALL, num_experts=4, top_k=2),
        "lfbyte-dense": LFByteTransformer(**SMALL, num_experts=1),
        # the recipes' form: a short convolution over keys and values, the context mixed as one chunk
        "lfbyte-short-conv": LFByteTransformer(**{**SMALL, "chunk_size": 32}, num_experts=1, short_conv=4),
        "gpt": GPT(seq_len=32, embed_dim=32, num_layers=2, num_heads=2),
    }
    for model in models.values():
        for mod in model.modules():  # AdaptiveLinear's up-projection starts at zero: make the adaptive path live
            if isinstance(mod, AdaptiveLinear):
                nn.init.normal_(mod.up, std=0.05)
        model.eval()
    return models


MODELS = _models()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, text_file: Path) -> Path:
    """One real tiny training run for the whole module."""
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    train(compose_cfg(*tiny_overrides(text_file)), run_dir)
    return run_dir


# ------------------------------------------------------------------ decoding equivalence


def _policy_windows(history: list[int], first: int, seq_len: int, keep: int) -> list[list[int]]:
    """The sliding-window policy, written independently: after each feed, the window's start."""
    windows, start = [], 0
    for end in [first, *range(first + 1, len(history) + 1)]:
        if end - start > seq_len:
            start = end - keep
        windows.append(history[start:end])
    return windows


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("prompt_len", [5, 45])  # the second is longer than seq_len=32
def test_incremental_logits_equal_full_forward_at_every_step(name: str, prompt_len: int) -> None:
    model, keep = MODELS[name], 12
    history = torch.randint(0, 257, (prompt_len + 70,), generator=torch.Generator().manual_seed(1)).tolist()
    expected = _policy_windows(history, prompt_len, model.config.seq_len, keep)
    cached, uncached = Decoder(model, keep=keep), Decoder(model, keep=keep, use_cache=False)
    feeds = [history[:prompt_len]] + [[tok] for tok in history[prompt_len:]]
    with torch.no_grad():
        for step, (tokens, window) in enumerate(zip(feeds, expected, strict=True)):
            got = cached.feed(tokens)
            assert cached.window == window, f"step {step}"
            full = model(torch.tensor([window])).logits[0, -1]
            torch.testing.assert_close(got, full, atol=1e-4, rtol=1e-4, msg=f"{name} step {step}")
            torch.testing.assert_close(uncached.feed(tokens), full, atol=1e-4, rtol=1e-4)
    slides = sum(1 for a, b in zip(expected, expected[1:], strict=False) if len(b) <= len(a))
    assert cached.prefills == 1 + slides  # the cache, not a re-run, served every other step
    assert slides >= 3 and max(len(w) for w in expected) == model.config.seq_len


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lfbyte-moe", "lfbyte-short-conv"])
def test_compiled_decoding_step_equals_the_eager_one_across_a_slide(name: str) -> None:
    """``Decoder(compile=True)``: one fullgraph-compiled graph (position as a tensor, the MoE's experts gathered
    on the device instead of read on the host) serves every position, and gives the eager step's logits."""
    model, keep = MODELS[name], 12
    history = torch.randint(0, 256, (45 + 40,), generator=torch.Generator().manual_seed(2)).tolist()
    eager, compiled = Decoder(model, keep=keep), Decoder(model, keep=keep, compile=True)
    feeds = [history[:45]] + [[tok] for tok in history[45:]]
    for step, tokens in enumerate(feeds):
        torch.testing.assert_close(compiled.feed(tokens), eager.feed(tokens), atol=1e-5, rtol=1e-5, msg=f"step {step}")
        assert compiled.window == eager.window
    assert compiled.prefills == eager.prefills >= 2  # a slide re-prefilled eagerly, then the graph went on
    kwargs = dict(max_length=50, temperature=0.9, seed=5)
    assert generate_bytes(model, "ab", compile=True, **kwargs) == generate_bytes(model, "ab", **kwargs)
    with pytest.raises(GenerationError, match="fixed-size decode state"):
        Decoder(MODELS["gpt"], compile=True)
    assert Decoder(model, compile=True).step is compiled.step  # compiled once per model


@pytest.mark.slow
def test_a_model_decoded_with_compile_can_be_freed() -> None:
    import gc
    import weakref

    model = LFByteTransformer(**SMALL, num_experts=1).eval()
    assert len(generate_bytes(model, "ab", 3, compile=True, seed=0)) == 3
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None  # the compiled step lives on the model, not in a cache that keeps it alive


def test_keep_must_fit_the_window() -> None:
    for keep in (0, 33):
        with pytest.raises(GenerationError, match="keep"):
            Decoder(MODELS["gpt"], keep=keep)


@pytest.mark.parametrize("name", list(MODELS))
def test_cached_and_uncached_generation_agree_beyond_seq_len(name: str) -> None:
    model = MODELS[name]
    prompt = bytes(range(40, 120))  # 80 bytes > seq_len
    kwargs = dict(max_length=60, temperature=1.0, seed=3)
    assert generate_bytes(model, prompt, **kwargs) == generate_bytes(model, prompt, use_cache=False, **kwargs)


# ------------------------------------------------------------------ sampling


def test_only_byte_values_are_sampled() -> None:
    logits = torch.zeros(257)
    logits[SEPARATOR] = 50.0  # the model "wants" the separator
    logits[7] = 1.0
    assert sample_byte(logits, temperature=0) == 7
    g = torch.Generator().manual_seed(0)
    assert all(0 <= sample_byte(logits, 1.0, generator=g) < 256 for _ in range(200))


def test_top_k_and_top_p_restrict_the_support() -> None:
    logits = torch.full((257,), -10.0)
    logits[[10, 20, 30, 40]] = torch.tensor([3.0, 2.5, 2.0, 1.0])
    g = torch.Generator().manual_seed(0)
    assert {sample_byte(logits, 1.0, top_k=2, generator=g) for _ in range(300)} == {10, 20}
    # probs of 10, 20, 30 are ~0.47, 0.29, 0.17: top_p=0.7 needs the first two, not the third
    assert {sample_byte(logits, 1.0, top_p=0.7, generator=g) for _ in range(300)} == {10, 20}
    assert {sample_byte(logits, 1.0, top_p=0.01, generator=g) for _ in range(50)} == {10}


def test_nan_logits_are_a_clear_error() -> None:
    with pytest.raises(GenerationError, match="NaN"):
        sample_byte(torch.full((257,), float("nan")))


def test_seed_reproduces_and_temperature_zero_is_greedy() -> None:
    model = MODELS["lfbyte-moe"]
    a = generate_text(model, "Once upon a time", 40, temperature=1.0, seed=11)
    assert a == generate_text(model, "Once upon a time", 40, temperature=1.0, seed=11)
    assert a != generate_text(model, "Once upon a time", 40, temperature=1.0, seed=12)
    greedy = generate_bytes(model, b"abc", 5, temperature=0, seed=1)
    assert greedy == generate_bytes(model, b"abc", 5, temperature=0, seed=2)
    with torch.no_grad():
        first = model(torch.tensor([[SEPARATOR, *b"abc"]])).logits[0, -1, :256].argmax()
    assert greedy[0] == int(first)


def test_str_and_bytes_prompts_agree_and_model_mode_is_restored() -> None:
    model = MODELS["lfbyte-dense"]
    model.train()
    try:
        assert generate_text(model, "héllo", 20, seed=5) == generate_text(model, "héllo".encode(), 20, seed=5)
        assert model.training
    finally:
        model.eval()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_length": -1}, "max_length"),
        ({"temperature": -0.5}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 1.5}, "top_p"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(GenerationError, match=match):
        generate_text(MODELS["gpt"], "x", **kwargs)


# ------------------------------------------------------------------ UTF-8


def test_prompt_with_split_character_and_invalid_bytes_never_raises() -> None:
    model = MODELS["gpt"]
    euro = "€".encode()  # 3 bytes
    assert generate_text(model, b"price " + euro[:2], 0) == "price \ufffd"
    assert generate_text(model, b"\xff\xfeok", 0) == "\ufffd\ufffdok"
    assert isinstance(generate_text(model, b"price " + euro[:2], 30, seed=0), str)


@pytest.mark.parametrize("seed", range(12))
def test_streamed_text_is_the_safe_decoding_of_all_bytes(seed: int) -> None:
    """Random weights emit arbitrary bytes: invalid sequences, and characters cut at the end."""
    model, prompt = MODELS["lfbyte-moe"], "naïve €".encode()[:-1]
    generated = generate_bytes(model, prompt, 25, seed=seed)
    pieces = list(stream_text(model, prompt, 25, seed=seed))
    assert "".join(pieces) == (prompt + generated).decode("utf-8", errors="replace")
    assert len(pieces) > 1  # text arrives as the bytes do, not at the end
    tail = "".join(stream_text(model, prompt, 25, seed=seed, include_prompt=False))
    assert "".join(pieces).endswith(tail)


def test_empty_prompt_starts_a_document() -> None:
    model = MODELS["lfbyte-dense"]
    assert len(generate_bytes(model, "", 10, seed=0)) == 10
    assert isinstance(generate_text(model, "", 10, seed=0), str)
    with pytest.raises(GenerationError, match="empty prompt"):
        generate_text(model, "", 10, document_start=False)


# ------------------------------------------------------------------ load_run


def test_load_run_rebuilds_the_trained_model(tiny_run: Path) -> None:
    run = load_run(tiny_run)
    cfg = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert isinstance(run, Run) and isinstance(run.model, LFByteTransformer) and not run.model.training
    assert run.config == cfg and run.step == cfg["trainer"]["max_steps"] and run.metrics["val_bpb"] > 0
    assert run.checkpoint.name == "last.pth" and run.device == torch.device("cpu")
    ckpt = torch.load(run.checkpoint, weights_only=True)
    for key, value in ckpt["model_state_dict"].items():
        torch.testing.assert_close(run.model.state_dict()[key], value)
    by_step = load_run(tiny_run, checkpoint=run.step)
    assert by_step.checkpoint.name == f"step_{run.step:07d}.pth"
    assert load_run(tiny_run, checkpoint=by_step.checkpoint.stem).checkpoint == by_step.checkpoint
    text = generate_text(run, "The model", 30, temperature=0.8, seed=0)  # a Run works where a model does
    assert text.startswith("The model") and text == generate_text(run.model, "The model", 30, temperature=0.8, seed=0)
    assert find_runs(tiny_run.parent) == [tiny_run]


def test_load_run_any_architecture_from_embedded_config(tmp_path: Path) -> None:
    """A run whose config.yaml is gone is rebuilt from the checkpoint's own copy (here a GPT)."""
    model_cfg = {"arch": "gpt", "seq_len": 32, "embed_dim": 32, "num_layers": 1, "num_heads": 2}
    model = GPT(**{k: v for k, v in model_cfg.items() if k != "arch"})
    save_checkpoint({"model_state_dict": model.state_dict(), "config": {"model": model_cfg}},
                    tmp_path / "checkpoints", step=7, keep_last=1)
    run = load_run(tmp_path)
    assert isinstance(run.model, GPT) and run.step is None
    assert generate_text(run, "hi", 5, temperature=0) == generate_text(model, "hi", 5, temperature=0)


def _broken_runs(tiny_run: Path, root: Path) -> dict[str, tuple[Path, str]]:
    """Bad run directories and the message each must give."""
    no_ckpt = root / "no_ckpt"
    no_ckpt.mkdir()
    shutil.copy(tiny_run / "config.yaml", no_ckpt / "config.yaml")
    mismatch = root / "mismatch"
    shutil.copytree(tiny_run, mismatch)
    cfg = yaml.safe_load((mismatch / "config.yaml").read_text())
    cfg["model"]["embed_dim"] *= 2
    (mismatch / "config.yaml").write_text(yaml.safe_dump(cfg))
    corrupt = root / "corrupt"
    shutil.copytree(tiny_run, corrupt)
    for ckpt in (corrupt / "checkpoints").iterdir():
        ckpt.unlink()
    (corrupt / "checkpoints" / "last.pth").write_bytes(b"not a checkpoint")
    sweep = root / "sweep"
    shutil.copytree(tiny_run, sweep / "0_model.embed_dim=64")
    return {
        "missing": (root / "does_not_exist", "does not exist"),
        "no checkpoint": (no_ckpt, "no checkpoint in"),
        "mismatch": (mismatch, "does not match the model"),
        # checkpoint.py calls garbage "objects other than tensors" (torch's message names weights_only)
        "corrupt": (corrupt, "is not a PyTorch checkpoint file"),  # text, not a refused pickle
        "sweep folder": (sweep, "not a run directory but holds 1 run"),
    }


def test_bad_run_directories_are_one_line_errors(tiny_run: Path, tmp_path: Path) -> None:
    for name, (run_dir, message) in _broken_runs(tiny_run, tmp_path).items():
        with pytest.raises(CheckpointError, match=message) as info:
            load_run(run_dir)
        assert "\n" not in str(info.value), name
    with pytest.raises(CheckpointError, match="shape checkpoint vs config: embed.weight"):
        load_run(tmp_path / "mismatch")
    with pytest.raises(CheckpointError, match="available: last.pth"):
        load_run(tiny_run, checkpoint="model_epoch_9")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no GPU"):
            load_run(tiny_run, device="cuda")


def test_cli_generates_and_reports_bad_runs_in_one_line(tiny_run: Path, tmp_path: Path) -> None:
    ok = run_cli("lfbyte.generate", f"run_dir={tiny_run}", "prompt=Once upon a time", "max_length=40",
                 "temperature=0.8", "seed=1", "num_threads=1", timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("Once upon a time") and len(ok.stdout) > len("Once upon a time")
    assert f"run {tiny_run}" in ok.stderr and "val_bpb" in ok.stderr
    broken = _broken_runs(tiny_run, tmp_path)
    for name in ("missing", "mismatch"):
        run_dir, message = broken[name]
        bad = run_cli("lfbyte.generate", f"run_dir={run_dir}", "num_threads=1", timeout=120)
        assert bad.returncode == 2, name
        assert bad.stderr.strip().startswith("error: ") and message in bad.stderr
        assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


@pytest.mark.slow
def test_load_run_on_multirun_job_directories(tmp_path: Path, text_file: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_cli("lfbyte.train", "-m", *tiny_overrides(text_file), "model.embed_dim=32,64",
                   f"hydra.sweep.dir={sweep}", check=True)
    jobs = find_runs(sweep)
    assert len(jobs) == 2, proc.stdout
    assert sorted(load_run(job).model.config.embed_dim for job in jobs) == [32, 64]
    assert len(generate_bytes(load_run(jobs[0]), "x", 8, seed=0)) == 8
    with pytest.raises(CheckpointError, match="holds 2 run"):
        load_run(sweep)


def test_decode_benchmark_prints_a_markdown_table() -> None:
    from lfbyte.bench.decode import run

    DEFAULTS = flat_defaults("bench_decode")

    table = run({**DEFAULTS, "preset": "tiny", "seq_len": 64, "contexts": [8, 16], "new_bytes": 2, "repeats": 1})
    rows = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split("|")[1].strip() for row in rows] == ["8", "16"]
    assert "| context (bytes) | uncached (bytes/s) | cached (bytes/s) | cached / uncached |" in table
    with pytest.raises(ConfigError, match="must fit seq_len"):
        run({**DEFAULTS, "preset": "tiny", "seq_len": 16, "contexts": [16]})
