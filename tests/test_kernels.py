"""Token mixing on flash-linear-attention's fused kernels vs the pure-torch ``decay_mix`` reference.

Three tiers: what runs everywhere (the choice, its log line, the errors, old checkpoints); fla's own
pure-torch references run through our argument conversion on CPU (needs fla-core importable: this is
what pins the layout, ``scale`` and gate conventions); and the fused Triton kernels against
``decay_mix`` on a GPU (skipped without CUDA and fla-core).
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor

from lfbyte.checkpoint import save_checkpoint
from lfbyte.config import to_plain, validate
from lfbyte.errors import ConfigError
from lfbyte.model import LFByteTransformer, TokenMixing, build_model, decay_mix, kernels
from lfbyte.model.kernels import fla_decay_mix, fla_unavailable, from_fla, to_fla
from lfbyte.model.token_mixing import mix_fn
from lfbyte.resources import estimate_memory
from lfbyte.rundir import check_resume
from lfbyte.runs import load_run

from .conftest import assert_one_error, compose_cfg, run_cli, tiny_overrides

LOGGER = "lfbyte.model.kernels"
FLA_LINE = (r'model\.mixer_kernel=fla needs fla-core on CUDA: pip install -e "\.\[gpu\]" \(fla-core>=0\.6\) on a '
            r"machine with a CUDA GPU, or use model\.mixer_kernel=auto \(here: [^()]+\)")


@pytest.fixture
def fresh_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget earlier choices and log lines, as in a new process."""
    monkeypatch.setattr(kernels, "_CHOSEN", {})
    monkeypatch.setattr(kernels, "_LOGGED", set())
    monkeypatch.setattr(kernels, "_FLA_OPS", None)  # (a fake's ops must not outlive its test)


def _inputs(b: int, h: int, t: int, dk: int, dv: int, device: str = "cpu", carried: bool = True,
            seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """q, k, v, log-decay and a carried state shaped as TokenMixing makes them (keys pre-scaled, fp32 decay)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, t, dk, generator=gen)
    k = torch.randn(b, h, t, dk, generator=gen) * dk**-0.5
    v = torch.randn(b, h, t, dv, generator=gen)
    g = -F.softplus(torch.randn(b, h, t, generator=gen) + 1.0)
    state = torch.randn(b, h, dk, dv, generator=gen) if carried else None
    return tuple(x.to(device) if x is not None else None for x in (q, k, v, g, state))  # type: ignore[return-value]


def _mixer(kernel: str) -> TokenMixing:
    torch.manual_seed(0)
    return TokenMixing(dim=48, num_heads=3, adapt_dim=8, adapt_rank=0, seq_len=64, chunk_size=16, mixer_kernel=kernel)


# ------------------------------------------------------------------------------------------- everywhere


def test_auto_runs_the_reference_on_cpu_and_says_why_once(fresh_choice: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    mixer, x = _mixer("auto"), torch.randn(2, 20, 48)
    assert mix_fn("auto", x.device, x.dtype) is decay_mix
    mixer(x, None)
    mixer(x[:, :1], None)
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == [
        "token mixing: pure-torch decay_mix (cpu device; the fused kernels need CUDA)"]


class FakeFla:
    """Stands in for fla's ops where fla cannot run: an independent loop over time in fla's documented
    conventions ((B, T, H, D), natural-log gates g (B, T, H), q multiplied by ``scale``), recording calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def op(self, name: str) -> Callable[..., tuple[Tensor, Tensor]]:
        def run(q: Tensor, k: Tensor, v: Tensor, g: Tensor, scale: float, initial_state: Tensor | None,
                output_final_state: bool) -> tuple[Tensor, Tensor]:
            self.calls.append((name, dict(scale=scale, initial_state=initial_state, T=q.shape[1],
                                          output_final_state=output_final_state)))
            b, t, h, dk = q.shape
            s = initial_state.clone() if initial_state is not None else q.new_zeros(b, h, dk, v.shape[-1])
            out = []
            for i in range(t):
                s = g[:, i, :, None, None].exp() * s + k[:, i, :, :, None] * v[:, i, :, None, :]
                out.append(torch.einsum("bhd,bhde->bhe", q[:, i] * scale, s))
            return torch.stack(out, 1), s

        return run


@pytest.fixture
def fake_fla(monkeypatch: pytest.MonkeyPatch, fresh_choice: None) -> FakeFla:
    fake = FakeFla()
    monkeypatch.setattr(kernels, "fla_unavailable", lambda device_type: None)
    monkeypatch.setattr(kernels, "_fla_ops", lambda: (fake.op("chunk"), fake.op("recurrent"), "9.9"))
    return fake


def test_where_fla_can_run_auto_takes_it_and_torch_forces_the_reference(
    fake_fla: FakeFla, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    x = torch.randn(2, 37, 48)
    ref_out, ref_state = _mixer("torch")(x, None)
    assert fake_fla.calls == []  # torch never asks fla, even where it could run
    out, state = _mixer("auto")(x, None)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, ref_state, rtol=1e-5, atol=1e-5)
    # one more byte continues the carried state on the recurrent op
    step_ref, _ = _mixer("torch")(x[:, :1], None, ref_state)
    step, _ = _mixer("auto")(x[:, :1], None, state)
    torch.testing.assert_close(step, step_ref, rtol=1e-5, atol=1e-5)
    assert [(name, c["T"], c["scale"], c["output_final_state"]) for name, c in fake_fla.calls] == [
        ("chunk", 37, 1.0, True), ("recurrent", 1, 1.0, True)]  # keys arrive pre-scaled: scale 1
    assert fake_fla.calls[0][1]["initial_state"] is None and fake_fla.calls[1][1]["initial_state"] is state[0]
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == [
        "token mixing: pure-torch decay_mix (model.mixer_kernel=torch)",
        "token mixing: fused fla kernels (fla-core 9.9) on cpu"]


def test_float64_stays_on_the_reference_under_auto(fake_fla: FakeFla) -> None:
    assert mix_fn("auto", torch.device("cpu"), torch.float64) is decay_mix
    with pytest.raises(RuntimeError, match=r"^model.mixer_kernel=fla cannot run here \(torch.float64 inputs;"):
        mix_fn("fla", torch.device("cpu"), torch.float64)


def test_fla_where_it_cannot_run_is_one_line(fresh_choice: None, tmp_path: Path, text_file: Path) -> None:
    model = LFByteTransformer(embed_dim=32, num_heads=2, num_layers=1, seq_len=32, adapt_dim=8, chunk_size=8,
                              mixer_kernel="fla")
    with pytest.raises(RuntimeError) as info:
        model(torch.randint(0, 256, (1, 5)))
    assert re.fullmatch(FLA_LINE, str(info.value)), str(info.value)
    # the memory estimate traces shapes on the meta device: fla is not needed there
    plain = to_plain(compose_cfg("model=tiny", "model.mixer_kernel=fla", "trainer.device=cpu"))
    assert estimate_memory(plain).activations > 0
    proc = run_cli("lfbyte.train", f"hydra.run.dir={tmp_path / 'run'}",
                   *tiny_overrides(text_file, **{"trainer.device": "cpu"}), "model.mixer_kernel=fla")
    assert_one_error(proc, re.compile("error: " + FLA_LINE))
    assert not (tmp_path / "run").exists()


def test_a_bad_mixer_kernel_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        validate(to_plain(compose_cfg("model=tiny", "model.mixer_kernel=cuda")))
    assert str(info.value) == "model.mixer_kernel='cuda' must be one of ['auto', 'torch', 'fla']"
    with pytest.raises(ValueError, match=r"mixer_kernel='triton' is not one of \('auto', 'torch', 'fla'\)"):
        LFByteTransformer(mixer_kernel="triton")
    validate(to_plain(compose_cfg("model=tiny", "model.mixer_kernel=torch")))


def test_a_run_from_before_the_key_loads_and_resumes_with_any_kernel(tmp_path: Path) -> None:
    cfg = to_plain(compose_cfg("model=tiny", "trainer.device=cpu"))
    old = copy.deepcopy(cfg)
    del old["model"]["mixer_kernel"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(old))
    torch.manual_seed(0)
    model = build_model(old["model"])
    path = save_checkpoint({"model_state_dict": model.state_dict(), "config": old, "trainer_state": {"step": 1}},
                           run / "checkpoints", step=1, keep_last=1)
    loaded = load_run(run, device="cpu")
    assert loaded.model.config.mixer_kernel == "auto"
    idx = torch.randint(0, 256, (1, 24))
    torch.testing.assert_close(loaded.model(idx).logits, model.eval()(idx).logits)
    for kernel in ("torch", "auto"):  # no trainer.allow_changes needed: the kernel does not change the maths
        new = copy.deepcopy(cfg)
        new["model"]["mixer_kernel"] = kernel
        new["trainer"]["resume"] = str(path)
        assert check_resume(new, run)["model.mixer_kernel"] == ["<unset>", kernel]


# ------------------------------------------------------------ fla's pure-torch references, on CPU


@pytest.mark.parametrize("t", [1, 37, 64, 130])
def test_our_conversion_matches_fla_reference_conventions(t: int) -> None:
    """fla's naive simple-GLA (fla/ops/simple_gla/naive.py), fed through to_fla/from_fla exactly as the
    dispatch feeds the fused kernels, equals decay_mix. Distinct b, h, dk, dv so a wrong transpose fails."""
    naive = pytest.importorskip("fla.ops.simple_gla.naive")
    q, k, v, g, state = _inputs(2, 3, t, 16, 8, seed=t)
    ref, ref_state = decay_mix(q, k, v, g, 16, state)
    for fn in (naive.naive_recurrent_simple_gla, naive.naive_chunk_simple_gla):
        out, new_state = from_fla(*fn(**to_fla(q, k, v, g, state)))
        # fp32 throughout, only the summation order differs: up to 1.5e-5 apart at t=130 with |o| up to ~7;
        # a wrong layout, scale or gate convention is off by O(1)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=5e-5, msg=fn.__name__)
        torch.testing.assert_close(new_state, ref_state, rtol=1e-5, atol=1e-5, msg=fn.__name__)


# ---------------------------------------------------------------------------- fused kernels, on a GPU

CUDA_FLA = pytest.mark.skipif(fla_unavailable("cuda") is not None,
                              reason=f"fused kernels: {fla_unavailable('cuda')}")
# Error as fla's own tests measure it: rms(x - ref) / rms(ref). The reference is decay_mix in fp32 on the
# same (rounded) inputs. fp32: fla's tolerance for its kernels (0.005; Triton's fp32 dots run as TF32,
# ~1e-3 relative). bf16: 8 mantissa bits against fp16's 11, so 8x fla's fp16 tolerance of 0.005; a wrong
# layout, scale or gate gives ~1.
RATIO = {torch.float32: 0.005, torch.bfloat16: 0.04}


def _ratio(x: Tensor, ref: Tensor) -> float:
    x, ref = x.detach().float(), ref.detach().float()
    return ((x - ref).square().mean().sqrt() / (ref.square().mean().sqrt() + 1e-8)).item()


def _forward_backward(fn: Callable[..., tuple[Tensor, Tensor]], q: Tensor, k: Tensor, v: Tensor, g: Tensor, state: Tensor | None, do: Tensor,
                      dstate: Tensor) -> dict[str, Tensor]:
    leaves = [x.detach().clone().requires_grad_() if x is not None else None for x in (q, k, v, g, state)]
    out, new_state = fn(*leaves[:4], 64, leaves[4])
    ((out.float() * do).sum() + (new_state.float() * dstate).sum()).backward()
    got = {"o": out, "state": new_state}
    got.update({f"d{name}": x.grad for name, x in zip(("q", "k", "v", "g", "state0"), leaves, strict=True)
                if x is not None})
    return got


@CUDA_FLA
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("t", [1, 37, 100, 513])
@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("carried", [False, True], ids=["fresh", "carried"])
def test_fused_kernels_match_decay_mix(dtype: torch.dtype, t: int, b: int, carried: bool) -> None:
    q, k, v, g, state = _inputs(b, 4, t, 64, 64, device="cuda", carried=carried, seed=t + b)
    q, k, v = (x.to(dtype) for x in (q, k, v))  # log-decay and state stay fp32, as TokenMixing passes them
    do = torch.randn(b, 4, t, 64, device="cuda")
    dstate = torch.randn(b, 4, 64, 64, device="cuda")
    fused = _forward_backward(fla_decay_mix, q, k, v, g, state, do, dstate)
    ref = _forward_backward(decay_mix, q.float(), k.float(), v.float(), g, state, do, dstate)
    assert fused.keys() == ref.keys()
    assert fused["o"].dtype == dtype and fused["state"].dtype == torch.float32
    errors = {name: _ratio(fused[name], ref[name]) for name in ref}
    assert all(e < RATIO[dtype] for e in errors.values()), errors


def _model_pair(**cfg: object) -> tuple[LFByteTransformer, LFByteTransformer]:
    torch.manual_seed(0)
    fused = LFByteTransformer(mixer_kernel="auto", **cfg).cuda()
    ref = LFByteTransformer(mixer_kernel="torch", **cfg).cuda()
    ref.load_state_dict(fused.state_dict())
    return fused, ref


CFG = dict(seq_len=256, embed_dim=256, num_layers=2, num_heads=4, adapt_dim=64, adapt_rank=16, num_experts=1)


@CUDA_FLA
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_the_whole_model_on_auto_matches_torch_on_cuda(dtype: torch.dtype) -> None:
    assert mix_fn("auto", torch.device("cuda"), dtype) is fla_decay_mix  # auto really took the fused path
    fused, ref = _model_pair(**CFG)
    idx = torch.randint(0, 256, (3, 200), device="cuda")
    grads = []
    for model in (fused, ref):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = model(idx, idx)
        out.loss.backward()
        grads.append((out, [p.grad for p in model.parameters()]))
    (out_f, g_f), (out_r, g_r) = grads
    assert _ratio(out_f.logits, out_r.logits) < RATIO[dtype]
    assert abs(out_f.loss.item() - out_r.loss.item()) < 0.01 * out_r.loss.item()
    assert all(_ratio(a, b) < 3 * RATIO[dtype] for a, b in zip(g_f, g_r, strict=True))  # through 2 layers


@CUDA_FLA
def test_one_byte_decoding_on_fused_kernels_matches_the_full_forward() -> None:
    fused, _ = _model_pair(**CFG)
    fused.eval()
    idx = torch.randint(0, 256, (2, 100), device="cuda")
    with torch.no_grad():
        full = fused(idx).logits
        out = fused(idx[:, :37], use_cache=True)  # prefill on the chunk kernel
        steps, state = [out.logits], out.state
        for i in range(37, 100):  # then one byte at a time on the recurrent kernel
            out = fused(idx[:, i : i + 1], state=state)
            steps.append(out.logits)
            state = out.state
    assert _ratio(torch.cat(steps, 1), full) < RATIO[torch.float32]
