"""A training step that never waits for the host, and a model that compiles as one graph.

On a GPU every read of a device value on the host (``.item()``, ``float(t)``, ``bool(t)``, ``.tolist()``, and
ops whose output size depends on the data: ``nonzero``, ``bincount``, ``unique``, ...) stalls the queue of
kernels. Here, on the CPU, the same reads are caught as they are made: by a dispatch mode (every scalar read
goes through ``aten._local_scalar_dense``) and a function mode (``Tensor.tolist``), active in the autograd
backward too. The training step must make none; the loop reads the device only where it logs, evaluates or
saves.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from lfbyte import GPT, LFByteTransformer
from lfbyte.config import to_plain, validate
from lfbyte.model import AdaptiveLinear, MixtureOfExperts
from lfbyte.trainer import Trainer

from .conftest import compose_cfg, tiny_overrides

# aten ops that make the host wait for the device: a scalar read, or an output whose size is data-dependent
HOST_READS = {"_local_scalar_dense", "nonzero", "bincount", "_unique", "_unique2", "unique_dim", "unique_consecutive",
              "masked_select", "repeat_interleave", "nonzero_static"}


class _Reads(TorchDispatchMode):
    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        name = func.overloadpacket.__name__
        if name in HOST_READS and not (name == "repeat_interleave" and (kwargs or {}).get("output_size")):
            self.log.append(name)
        elif name in ("index", "index_put", "index_put_") and any(  # a boolean mask: its nonzero() is a read
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else ())):
            self.log.append(f"{name} with a boolean mask")
        return func(*args, **(kwargs or {}))


class _ToList(TorchFunctionMode):
    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if getattr(func, "__name__", "") == "tolist":
            self.log.append("tolist")
        return func(*args, **(kwargs or {}))


@contextmanager
def host_reads() -> Iterator[list[str]]:
    log: list[str] = []
    with _ToList(log), _Reads(log):
        yield log


def test_the_detector_sees_every_kind_of_read() -> None:
    """The test below is only as good as this: each way of reading the device is caught."""
    t = torch.tensor([1.0, 0.0, 2.0])
    for read in (lambda: t.sum().item(), lambda: float(t[0]), lambda: bool(t[0] > 0), lambda: t.tolist(),
                 lambda: t.nonzero(), lambda: torch.bincount(t.long()), lambda: t.unique(), lambda: t[t > 0]):
        with host_reads() as log:
            read()
        assert log, read
    moe = MixtureOfExperts(dim=10, hidden=24, num_experts=3, top_k=2)  # 10 fp32 values: no grouped_mm, host counts
    with host_reads() as log:
        moe(torch.randn(2, 5, 10))
    assert log == ["tolist"]


def _trainer(tmp_path: Path, text_file: Path, **extra: object) -> Trainer:
    cfg = to_plain(compose_cfg(*tiny_overrides(text_file, **{
        "trainer.max_steps": 9, "trainer.log_interval": 4, "trainer.eval_interval": 1000,
        "trainer.accumulation_steps": 2, "trainer.sample_length": 0, **extra})))
    validate(cfg)
    return Trainer(cfg, tmp_path)


# the MoE's step is sync-free through grouped_mm (torch >= 2.8): without it, the CPU reads counts on the host
GROUPED_MM = pytest.mark.skipif(not hasattr(F, "grouped_mm"), reason="torch without F.grouped_mm")


@GROUPED_MM
@pytest.mark.parametrize("extra", [{}, {"model.num_experts": 1}, {"trainer.on_nonfinite": "skip"},
                                   {"trainer.precision": "bf16", "model.dropout": 0.1}],
                         ids=["moe-fp32", "dense", "skip-mode", "bf16-dropout"])
def test_training_steps_read_nothing_from_the_device(tmp_path: Path, text_file: Path, extra: dict) -> None:
    trainer = _trainer(tmp_path, text_file, **extra)
    step_reads: list[list[str]] = []
    train_step = trainer.train_step

    def watched_step(lr: float):  # noqa: ANN202
        with host_reads() as log:
            result = train_step(lr)
        step_reads.append(log)
        return result

    trainer.train_step = watched_step  # type: ignore[method-assign]
    logged = trainer.fit()
    trainer.close()
    assert logged["step"] == 9 and len(step_reads) == 9
    assert step_reads == [[]] * 9, step_reads  # forward, backward, clipping, the non-finite rule, AdamW
    # the loop reads the device where it logs (steps 1, 4 and 8 with log_interval=4) and at the end
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train_loss" in r] == [1, 4, 8]


def test_a_nan_is_still_caught_at_its_own_step_when_read_later(tmp_path: Path, text_file: Path) -> None:
    """The device skips the bad update and every later one; the host, reading at step 4, names step 2."""
    trainer = _trainer(tmp_path, text_file, **{"trainer.max_steps": 6})

    def hook(module: torch.nn.Module, _inp: object, out: torch.Tensor) -> torch.Tensor:
        return out * float("nan") if module.training and trainer.step + 1 == 2 else out

    trainer.model.embed.register_forward_hook(hook)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    after_step_1: dict[str, torch.Tensor] = {}
    step = trainer.train_step

    def keep_step_1(lr: float):  # noqa: ANN202
        result = step(lr)
        if trainer.step == 0:
            after_step_1.update({k: v.clone() for k, v in trainer.model.state_dict().items()})
        return result

    trainer.train_step = keep_step_1  # type: ignore[method-assign]
    with pytest.raises(Exception, match="non-finite loss nan at step 2; the update was not applied"):
        trainer.fit()
    trainer.close()
    assert trainer.step == 1  # the counters say where the weights are
    for k, v in trainer.model.state_dict().items():  # steps 3 and 4 ran but changed nothing
        torch.testing.assert_close(v, after_step_1[k], atol=0, rtol=0)
    assert any(not torch.equal(start[k], after_step_1[k]) for k in start)


def _tiny(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "gpt":
        return GPT(seq_len=32, embed_dim=32, num_layers=2, num_heads=2)
    # "lfbyte-recipe": the recipes' form (dense, short conv, one chunk), trained compiled on the AMX host
    # (experiments/compare/amx_host); "lfbyte": chunked mixing and a routed MoE
    form = ({"chunk_size": 32, "num_experts": 1, "short_conv": 4} if arch == "lfbyte-recipe"
            else {"chunk_size": 8, "num_experts": 4, "top_k": 2})
    model = LFByteTransformer(seq_len=32, embed_dim=32, num_layers=2, num_heads=2, adapt_dim=8, adapt_rank=4, **form)
    for mod in model.modules():  # make the adaptive path live (its up-projection starts at zero)
        if isinstance(mod, AdaptiveLinear):
            torch.nn.init.normal_(mod.up, std=0.05)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["lfbyte", "lfbyte-recipe", "gpt"])
def test_the_model_compiles_as_one_graph_and_matches_eager(arch: str) -> None:
    """``torch.compile(fullgraph=True)``: any graph break (a host read, an untraceable call) is an error.
    fp32 training (forward and backward; the MoE's grouped matmuls through ``lfbyte::grouped_mm``, as torch.compile
    traces grouped_mm itself in bf16 only) and a bf16 autocast forward (grouped_mm itself)."""
    torch._dynamo.reset()  # earlier tests compiled the same forward at other shapes: start from no cache
    model = _tiny(arch)
    x, y = torch.randint(0, 256, (2, 32)), torch.randint(0, 256, (2, 32))
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    out = compiled(x, y)
    out.training_loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref = model(x, y)
    ref.training_loss.backward()
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, atol=1e-5, rtol=1e-4, msg=n)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = compiled(x, y).loss
        torch.testing.assert_close(low.float(), ref.loss.detach(), atol=0.05, rtol=0.05)


@pytest.mark.slow
@GROUPED_MM
def test_compiled_fp32_moe_runs_the_grouped_matmuls_not_the_dense_dispatch() -> None:
    """A compiled fp32 graph on the CPU runs each expert on its own tokens (``lfbyte::grouped_mm``), not every expert
    on every token, and matches the eager values and gradients, with an idle expert (an empty group)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    moe = MixtureOfExperts(dim=16, hidden=24, num_experts=4, top_k=1)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[2, 0] = 10.0  # x[:, 0] > 0 -> expert 2, the rest to expert 0 or 1; expert 3 idle
    x = torch.randn(2, 9, 16, requires_grad=True)
    seen: list[str] = []

    def inductor_recording_ops(gm: torch.fx.GraphModule, inputs: list) -> object:  # what dynamo hands to inductor
        seen.extend(str(node.target) for node in gm.graph.nodes)
        return torch._dynamo.lookup_backend("inductor")(gm, inputs)

    out, aux, _ = torch.compile(moe, fullgraph=True, dynamic=False, backend=inductor_recording_ops)(x)
    assert "lfbyte.grouped_mm.default" in seen, seen
    (out.square().sum() + aux).backward()
    grads = (x.grad.clone(), moe.w_in.grad.clone(), moe.w_out.grad.clone())
    x.grad = None
    moe.zero_grad()
    ref, ref_aux, _ = moe(x)
    (ref.square().sum() + ref_aux).backward()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, (x.grad, moe.w_in.grad, moe.w_out.grad), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert grads[1][3].abs().sum() == 0  # the idle expert's weights get no gradient


@GROUPED_MM
def test_moe_dense_dispatch_equals_the_sorted_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """``dense`` (every expert on every token, gates zero off the top-k: what CUDA without grouped_mm and
    compiled fp32 graphs run) gives the sorted dispatch's output and gradients."""
    torch.manual_seed(0)
    moe = MixtureOfExperts(dim=16, hidden=24, num_experts=4, top_k=2)
    # the memory estimate traces on the meta device what the CPU runs eagerly (not dense's E/k times the work)
    assert moe.dispatch(torch.empty(5, 16, device="meta")) == "loop"
    x = torch.randn(3, 7, 16, requires_grad=True)
    results = []
    for mode in ("grouped", "loop", "dense"):
        monkeypatch.setattr(MixtureOfExperts, "dispatch", lambda self, t, mode=mode: mode)
        out, aux, stats = moe(x)
        (out.square().sum() + aux).backward()
        results.append((out.detach(), x.grad.clone(), moe.w_in.grad.clone(), moe.router.weight.grad.clone(),
                        stats.expert_load))
        x.grad, moe.w_in.grad, moe.router.weight.grad = None, None, None
        moe.zero_grad()
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("model", ["tiny", "gpt_tiny"])
@pytest.mark.parametrize("precision", ["bf16", "fp32", "fp16"])  # grouped MoE, dense MoE, the GradScaler
def test_cuda_training_steps_never_synchronize(tmp_path: Path, text_file: Path, model: str, precision: str) -> None:
    """On a GPU, CUDA's own detector: any synchronising call inside a step raises."""
    trainer = _trainer(tmp_path, text_file, **{"model": model, "trainer.device": "cuda",
                                              "trainer.precision": precision})
    trainer.train_step(1e-3)  # the first step initialises lazily (cuBLAS handles, the fused kernels' state)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        results = [trainer.train_step(1e-3) for _ in range(3)]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    trainer.close()
    assert all(torch.isfinite(r.loss).item() for r in results)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_decoding_equals_eager_decoding() -> None:
    """``Decoder(compile=True)`` on CUDA: the one-byte step replayed as a CUDA graph gives the eager logits."""
    from lfbyte.generate import Decoder

    model = _tiny("lfbyte").cuda().eval()
    history = torch.randint(0, 256, (70,), generator=torch.Generator().manual_seed(0)).tolist()
    eager, graphed = Decoder(model, keep=12), Decoder(model, keep=12, compile=True)
    for step, tokens in enumerate([history[:20]] + [[t] for t in history[20:]]):
        torch.testing.assert_close(graphed.feed(tokens), eager.feed(tokens), atol=1e-4, rtol=1e-4, msg=f"step {step}")


def test_a_checkpoint_saved_by_foreach_adamw_resumes(tmp_path: Path, text_file: Path) -> None:
    """Checkpoints written before AdamW was fused on the CPU say ``fused: None`` in their param groups; loading
    restores those flags, and the device-side skip (``found_inf``) needs the fused kernel."""
    from lfbyte.checkpoint import load_checkpoint

    trainer = _trainer(tmp_path / "a", text_file, **{"trainer.max_steps": 2})
    trainer.fit()
    trainer.close()
    ckpt = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pth")
    for group in ckpt["optimizer_state_dict"]["param_groups"]:
        group.update(fused=None, foreach=None)
    old = tmp_path / "old.pth"
    torch.save(ckpt, old)
    resumed = _trainer(tmp_path / "b", text_file, **{"trainer.max_steps": 4, "trainer.resume": str(old)})
    assert resumed.step == 2 and all(g["fused"] for g in resumed.optimizer.param_groups)
    assert resumed.fit()["step"] == 4
    resumed.close()
