"""``python -m lfbyte.generate`` and ``generate_text`` under bad input: one clear line, exit 2, never a
traceback; and, property-based, every prompt (invalid UTF-8, empty, NUL, emoji, longer than the
model's window) gives a ``str``: the safe decoding of the prompt's bytes and the generated ones.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from lfbyte.checkpoint import save_checkpoint
from lfbyte.cli import check_overrides
from lfbyte.config import CONF_DIR, to_plain, usable_cpus
from lfbyte.errors import ConfigError, LFByteError
from lfbyte.generate import (
    GenerationError,
    generate_bytes,
    generate_text,
    run_cli,
)
from lfbyte.model import build_model

from .conftest import REPO, EvilPickle, assert_one_error, cli_env
from .conftest import run_cli as run_module

# seq_len 32: prompts of 33+ bytes make the decoder slide its window
TINY = {"arch": "lfbyte", "seq_len": 32, "embed_dim": 32, "num_layers": 1, "num_heads": 2, "adapt_dim": 8,
        "adapt_rank": 4, "chunk_size": 8, "num_experts": 2, "top_k": 1}
TINY_GPT = {"arch": "gpt", "seq_len": 32, "embed_dim": 32, "num_layers": 1, "num_heads": 2}


def _models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {cfg["arch"]: build_model(cfg).eval() for cfg in (TINY, TINY_GPT)}


MODELS = _models()
GENERATE_OPTIONS = [k for k in yaml.safe_load(Path(CONF_DIR, "generate.yaml").read_text()) if k not in ("defaults", "hydra")]
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory as training leaves it (config.yaml, checkpoints/), holding an untrained tiny model."""
    root = tmp_path_factory.mktemp("gen") / "run"
    root.mkdir()
    (root / "config.yaml").write_text(yaml.safe_dump({"model": TINY}))
    save_checkpoint({"model_state_dict": MODELS["lfbyte"].state_dict(), "config": {"model": TINY}},
                    root / "checkpoints", step=1, keep_last=1)
    return root


def _run_with_checkpoint(root: Path, content: bytes) -> tuple[Path, Path]:
    """A copy of a run whose only checkpoint is ``content``."""
    (root / "checkpoints").mkdir(parents=True)
    (root / "config.yaml").write_text(yaml.safe_dump({"model": TINY}))
    ckpt = root / "checkpoints" / "last.pth"
    ckpt.write_bytes(content)
    return root, ckpt


def _refused(proc: subprocess.CompletedProcess, expected: str | re.Pattern) -> None:
    assert_one_error(proc, expected, quiet=True)  # generate prints nothing else when it refuses


def _generate(*args: str) -> subprocess.CompletedProcess:
    return run_module("lfbyte.generate", *args, timeout=120)





# ------------------------------------------------------------------------------ the CLI, end to end


def test_a_good_run_generates_so_the_errors_below_are_the_inputs(run_dir: Path) -> None:
    prompt = "a prompt longer than the 32-byte window of the tiny model, so it slides"
    proc = _generate(f"run_dir={run_dir}", f"prompt='{prompt}'", "max_length=8", "seed=0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(prompt) and proc.stdout.endswith("\n")
    assert proc.stderr.startswith(f"run {run_dir}, checkpoint last.pth, lfbyte") and "Traceback" not in proc.stderr


def test_a_missing_run_dir_or_a_file_is_one_line(tmp_path: Path) -> None:
    assert_one_error(_generate(f"run_dir={tmp_path / 'nope'}"),
                      f"error: run directory {tmp_path / 'nope'} does not exist; pass run_dir=<a folder under outputs/>")
    (tmp_path / "file").write_text("x")
    assert_one_error(_generate(f"run_dir={tmp_path / 'file'}"),
                      f"error: run directory {tmp_path / 'file'} is a file, not a folder; "
                      "pass run_dir=<a folder under outputs/>")


def test_a_run_dir_without_checkpoints_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": TINY}))
    assert_one_error(_generate(f"run_dir={tmp_path}"),
                      f"error: no checkpoint in {tmp_path / 'checkpoints'}; train the run first "
                      "(python -m lfbyte.train ...) or pass checkpoint=<path to a .pth file>")


def test_a_truncated_checkpoint_and_a_foreign_torch_file_are_one_line(run_dir: Path, tmp_path: Path) -> None:
    whole = (run_dir / "checkpoints" / "last.pth").read_bytes()
    root, ckpt = _run_with_checkpoint(tmp_path / "truncated", whole[: len(whole) // 2])
    assert_one_error(_generate(f"run_dir={root}"),
                      re.compile(rf"error: checkpoint {re.escape(str(ckpt))} is corrupt or truncated \(.+\)"))
    root, ckpt = _run_with_checkpoint(tmp_path / "foreign", b"")
    torch.save({"weights": torch.zeros(3)}, ckpt)  # loadable, but not a checkpoint
    assert_one_error(_generate(f"run_dir={root}"), f"error: {ckpt} is not an lfbyte checkpoint (no model_state_dict)")


def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker, control = tmp_path / "MARKER", tmp_path / "CONTROL"
    root, ckpt = _run_with_checkpoint(tmp_path / "evil", b"")
    torch.save({"model_state_dict": EvilPickle(marker)}, ckpt)
    # the payload is live: an unsafe load of the same object runs the command
    torch.save({"model_state_dict": EvilPickle(control)}, tmp_path / "control.pth")
    torch.load(tmp_path / "control.pth", weights_only=False)
    assert control.exists()

    proc = _generate(f"run_dir={root}")
    _refused(proc, re.compile(
        rf"error: refusing to load {re.escape(str(ckpt))}: it contains objects other than tensors and plain data "
        r"\([^)]*posix\.system[^)]*\); only load checkpoints you trust, re-saved as state dicts"))
    assert not marker.exists()


def test_bad_sampling_values_are_reported_together_before_the_load(run_dir: Path) -> None:
    proc = _generate(f"run_dir={run_dir}", "max_length=-1", "temperature=inf", "top_k=0", "top_p=1.5", "seed=abc")
    _refused(proc, "error: max_length=-1 must be an integer >= 0; "
                            "temperature=inf must be a finite number >= 0 (0 = greedy); "
                            "top_k=0 must be null or an integer >= 1; top_p=1.5 must be null or in (0, 1]; "
                            "seed='abc' must be null or an integer that fits in 64 bits")
    proc = _generate(f"run_dir={run_dir}", "max_length=abc", "temperature=-0.5", "top_k=2.5", "top_p=0")
    _refused(proc, "error: max_length='abc' must be an integer >= 0; "
                            "temperature=-0.5 must be a finite number >= 0 (0 = greedy); "
                            "top_k=2.5 must be null or an integer >= 1; top_p=0 must be null or in (0, 1]")


def test_an_unknown_override_key_is_one_line_not_hydras_report(run_dir: Path) -> None:
    proc = _generate(f"run_dir={run_dir}", "max_lenght=5")
    _refused(proc, "error: max_lenght is not a known option (did you mean max_length?); "
                            f"the options are {', '.join(GENERATE_OPTIONS)} (conf/generate.yaml)")


def test_a_closed_pipe_stops_quietly(run_dir: Path) -> None:
    """``python -m lfbyte.generate ... | head -c 16``: no BrokenPipeError traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "lfbyte.generate", f"run_dir={run_dir}", "max_length=1000000"],
                            cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert len(proc.stdout.read(16)) == 16
        proc.stdout.close()
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 141, err.decode()
    assert b"Traceback" not in err and b"error" not in err.lower()


# ------------------------------------------------------------------------------ the same checks, in process


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["+max_lenght=5"], "max_lenght is not a known option (did you mean max_length?); the options are "
                            f"{', '.join(GENERATE_OPTIONS)} (conf/generate.yaml)"),
        (["~max_length"], "max_length cannot be removed (~max_length); set it instead, e.g. max_length=null"),
        (["prompt=[1"], "cannot parse the override 'prompt=[1': no viable alternative at input '[1' "
                        "(quote values with spaces, commas or brackets: key=\"'a, b'\")"),
        (["hydra/job_logging=nope"], "hydra/job_logging=nope is not an option (did you mean none?); "
                                     "choose one of: default, disabled, none, stdout"),
    ],
)
def test_command_line_problems_are_one_line(argv: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_overrides("generate", argv, flat=True)
    assert str(info.value) == expected


def test_good_command_lines_pass_the_check() -> None:
    check_overrides("generate", ["prompt='Hello, world'", "max_length=3", "top_k=null", "seed=1"], flat=True)
    check_overrides("generate", ["--cfg", "job", "anything=goes"], flat=True)  # Hydra's own modes are left to Hydra


def _cfg(*overrides: str) -> dict:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return to_plain(compose("generate", overrides=list(overrides)))


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("keep=0", "keep=0 must be null (seq_len // 2) or an integer >= 1"),
        ("keep=abc", "keep='abc' must be null (seq_len // 2) or an integer >= 1"),
        ("include_prompt=maybe", "include_prompt='maybe' must be true or false"),
        ("num_threads=0", f"num_threads=0 must be null (torch's default) or an integer in 1..{usable_cpus()} "
                          "(this machine's cores)"),
        ("device=tpu", "device='tpu' is not a device; use auto, cpu, cuda or cuda:N"),
        ("seed=100000000000000000000", "seed=100000000000000000000 must be null or an integer that fits in 64 bits"),
        ("prompt=${nosuch}", "prompt: Interpolation key 'nosuch' not found; write a literal $ as \\$"),
    ],
)
def test_other_bad_values_are_lfbyte_errors(run_dir: Path, override: str, expected: str,
                                            capsys: pytest.CaptureFixture) -> None:
    """What ``_hydra_entry`` turns into ``error: <line>`` and exit 2 (as the subprocess tests above show)."""
    with pytest.raises(LFByteError) as info:
        run_cli(_cfg(f"run_dir={run_dir}", "max_length=2", override))
    assert str(info.value) == expected
    assert capsys.readouterr().out == ""  # refused before anything was generated


# ------------------------------------------------------------------------------ properties of generate_text

PROMPTS = st.one_of(
    st.binary(max_size=80),  # arbitrary bytes: invalid UTF-8, split characters, NUL, empty
    st.text(max_size=60),  # any unicode (emoji, NUL, combining marks)
    st.text(st.characters(exclude_categories=()), max_size=8),  # lone surrogates too
    st.sampled_from(["", b"", "\x00", "🙂" * 12, "é" * 20, b"\xff" * 40]),
)


def _raw(prompt: str | bytes) -> bytes:
    return prompt.encode("utf-8", errors="surrogatepass") if isinstance(prompt, str) else prompt


@FAST
@given(arch=st.sampled_from(sorted(MODELS)), prompt=PROMPTS, max_length=st.integers(0, 8),
       seed=st.integers(0, 2**63 - 1),
       temperature=st.one_of(st.just(0.0), st.floats(min_value=5e-324, max_value=1e300)),  # denormal to huge
       top_k=st.one_of(st.none(), st.integers(1, 300)),
       top_p=st.one_of(st.none(), st.floats(min_value=1e-9, max_value=1.0)))
def test_any_prompt_gives_the_safe_decoding_of_prompt_and_continuation(
    arch: str, prompt: str | bytes, max_length: int, seed: int, temperature: float, top_k: int | None,
    top_p: float | None,
) -> None:
    model = MODELS[arch]
    kw = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed}
    text = generate_text(model, prompt, max_length, **kw)
    assert isinstance(text, str)
    continuation = generate_bytes(model, prompt, max_length, **kw)
    assert len(continuation) == max_length and all(0 <= b < 256 for b in continuation)
    assert text == (_raw(prompt) + continuation).decode("utf-8", errors="replace")
    if isinstance(prompt, str) and _raw(prompt) == prompt.encode("utf-8", errors="replace"):  # no lone surrogates
        assert text.startswith(prompt)


@FAST
@given(prompt=st.binary(min_size=33, max_size=200), max_length=st.integers(1, 8), seed=st.integers(0, 2**32))
def test_prompts_longer_than_the_window_slide_and_still_decode(prompt: bytes, max_length: int, seed: int) -> None:
    model = MODELS["lfbyte"]
    assert len(prompt) > model.config.seq_len
    text = generate_text(model, prompt, max_length, seed=seed)
    cached = generate_bytes(model, prompt, max_length, seed=seed)
    assert cached == generate_bytes(model, prompt, max_length, seed=seed, use_cache=False)
    assert text == (prompt + cached).decode("utf-8", errors="replace")


def test_a_vanishing_temperature_is_greedy_not_nan() -> None:
    for model in MODELS.values():
        greedy = generate_bytes(model, "ab", 8, temperature=0)
        assert generate_bytes(model, "ab", 8, temperature=1e-300, seed=3) == greedy


def test_max_length_zero_is_the_prompt_alone() -> None:
    assert generate_text(MODELS["gpt"], b"ok\xff", 0) == "ok\ufffd"
    assert generate_text(MODELS["gpt"], "", 0) == ""


@FAST
@given(max_length=st.one_of(st.integers(max_value=-1), st.floats(), st.booleans(), st.none(), st.text(max_size=4)))
def test_an_invalid_max_length_is_a_generation_error(max_length: object) -> None:
    with pytest.raises(GenerationError) as info:
        generate_text(MODELS["gpt"], "x", max_length)  # type: ignore[arg-type]
    assert str(info.value) == f"max_length={max_length!r} must be an integer >= 0"


@FAST
@given(temperature=st.one_of(st.floats(max_value=0.0, exclude_max=True), st.sampled_from([float("nan"), float("inf")]),
                             st.booleans(), st.text(max_size=4)),
       seed=st.one_of(st.integers(min_value=2**64, max_value=2**80), st.sampled_from(["abc", "1.5", [1]])))
def test_invalid_temperature_and_seed_are_one_generation_error(temperature: object, seed: object) -> None:
    with pytest.raises(GenerationError) as info:
        generate_text(MODELS["gpt"], "x", 4, temperature=temperature, seed=seed)  # type: ignore[arg-type]
    assert str(info.value) == (f"temperature={temperature!r} must be a finite number >= 0 (0 = greedy); "
                               f"seed={seed!r} must be null or an integer that fits in 64 bits")
