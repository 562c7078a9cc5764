"""``python -m lfbyte.bench``: how fast and how good each model is on this machine, as Markdown tables.

Sections, chosen with ``bench.sections=[...]`` and run in this order:

- ``peak``: the machine's own square-matmul peak (fp32, bf16) in GFLOP/s, the reference for MFU.
- ``throughput``: training bytes/s of each model config per precision through the real trainer step
  (data, autocast, backward, clipping, AdamW), and MFU = model FLOPs per byte (3× the forward FLOPs
  counted from the layers, :meth:`flops_per_token`) × bytes/s / that precision's measured peak.
- ``scaling``: training cost per byte and activation memory (bytes saved for backward) as ``seq_len``
  grows, with the same number of bytes in every step.
- ``quality``: validation bits/byte reached by each model after the same wall-clock budget on the same
  data (``data.path=...``), trained back to back by :func:`lfbyte.train.train`.

Timings are medians over several steps. Run it alone: another busy process on the same cores
distorts every number (``flock`` a shared lock if others use the machine).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ..cli import hydra_cli, one_line_errors
from ..config import is_int, model_preset, to_plain, validate
from ..device import resolve_device
from ..errors import ConfigError
from ..precision import autocast
from .common import environment, median_seconds

SECTIONS = ("peak", "throughput", "scaling", "quality")
MATMUL_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ---------------------------------------------------------------- configs
def model_config(name: str) -> dict[str, Any]:
    """The ``model=<name>`` group option as a plain dict of model keys."""
    try:
        return model_preset(name)
    except ConfigError as e:
        raise ConfigError(f"bench: {e}") from None


def train_config(base: dict[str, Any], model: str, **trainer: Any) -> dict[str, Any]:
    """A full training config: the bench's data/optimizer/trainer groups with ``model`` and ``trainer`` overrides."""
    cfg = {k: copy.deepcopy(v) for k, v in base.items() if k not in ("bench", "hydra")}
    cfg["model"] = model_config(model)
    seq_len = trainer.pop("seq_len", None)
    if seq_len is not None:
        cfg["model"]["seq_len"] = int(seq_len)
    cfg["trainer"].update(trainer)
    validate(cfg)
    return cfg


# ------------------------------------------------------------- measurement
def matmul_peak(precision: str, sizes: list[int], seconds: float, device: torch.device) -> dict[str, float]:
    """Best median GFLOP/s of ``n×n @ n×n`` over ``sizes``: the most this machine's matmul gives at that dtype."""
    best = {"gflops": 0.0, "size": 0}
    dtype = MATMUL_DTYPES[precision]
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        once = median_seconds(lambda: a @ b, 3, 1, device)  # noqa: B023
        reps = max(3, int(seconds / max(once, 1e-6)))
        sec = median_seconds(lambda: a @ b, reps, 0, device)  # noqa: B023
        gflops = 2 * n**3 / sec / 1e9
        if gflops > best["gflops"]:
            best = {"gflops": gflops, "size": n}
    return best


def saved_activation_bytes(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str) -> int:
    """Bytes of the distinct tensors autograd keeps for backward in one training forward (activations
    plus per-step weight casts): the part of training memory that grows with ``seq_len``."""
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), t.device.index or 0)] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(x.device, precision):
        out = model(x, y)
    del out
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for (ptr, _), n in seen.items() if ptr not in params)


def measure_training(cfg: dict[str, Any], run_dir: Path, steps: int, warmup: int) -> dict[str, Any]:
    """Median time of the real trainer's optimizer step (data read, forward, backward, clip, AdamW)."""
    from ..trainer import Trainer

    trainer = Trainer(cfg, run_dir)
    try:
        lr = float(cfg["optimizer"]["lr"])
        cuda = trainer.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(trainer.device)
        sec = median_seconds(lambda: trainer.train_step(lr), steps, warmup, trainer.device)
        peak = torch.cuda.max_memory_allocated(trainer.device) / 2**20 if cuda else None
        model, seq_len = trainer.model, trainer.seq_len
        x, y = trainer.sampler.read(trainer.sampler.step_batches(trainer.batch_size, 1, 0, 1)[0])
        act = saved_activation_bytes(model, x.to(trainer.device), y.to(trainer.device), trainer.precision)
        return {
            "parameters": model.num_parameters(),
            "precision": trainer.precision,
            "seq_len": seq_len,
            "batch_size": trainer.batch_size,
            "step_s": sec,
            "bytes_per_s": trainer.bytes_per_step / sec,
            "us_per_byte": sec / trainer.bytes_per_step * 1e6,
            "train_flops_per_byte": 3 * model.flops_per_token(seq_len),
            "activation_mib": act / 2**20,
            "peak_mib": peak,  # the device's peak allocation over the timed steps (CUDA only)
        }
    finally:
        trainer.close()


# ---------------------------------------------------------------- sections
def run_peak(bc: dict, device: torch.device) -> dict[str, dict[str, float]]:
    return {p: matmul_peak(p, bc["sizes"], bc["seconds"], device) for p in bc["precisions"]}


def run_throughput(base: dict, bc: dict, out_dir: Path, peak: dict) -> list[dict[str, Any]]:
    rows = []
    for name in bc["models"]:
        for precision in bc["precisions"]:
            cfg = train_config(base, name, precision=precision, batch_size=bc["batch_size"], seq_len=bc.get("seq_len"))
            row = {"model": name, **measure_training(cfg, out_dir / "throughput" / name, bc["steps"], bc["warmup"])}
            achieved = row["train_flops_per_byte"] * row["bytes_per_s"]
            row["achieved_gflops"] = achieved / 1e9
            ref = peak.get(row["precision"])
            row["mfu"] = achieved / (ref["gflops"] * 1e9) if ref else None
            rows.append(row)
            print(f"throughput {name} {precision}: {row['bytes_per_s']:,.0f} bytes/s", file=sys.stderr, flush=True)
    return rows


def run_scaling(base: dict, bc: dict, out_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for name in bc["models"]:
        for seq_len in bc["seq_lens"]:
            batch = max(1, int(bc["bytes_per_step"]) // int(seq_len))
            cfg = train_config(base, name, precision=bc["precision"], batch_size=batch, seq_len=seq_len)
            rows.append({"model": name, **measure_training(cfg, out_dir / "scaling" / name, bc["steps"], bc["warmup"])})
            print(f"scaling {name} seq_len={seq_len}: {rows[-1]['us_per_byte']:.1f} us/byte", file=sys.stderr, flush=True)
    for row in rows:
        ref = next((r for r in rows if r["model"] == row["model"] and r["seq_len"] == bc["reference_seq_len"]), None)
        row["cost_vs_ref"] = row["us_per_byte"] / ref["us_per_byte"] if ref else None
    return rows


def run_quality(base: dict, bc: dict, out_dir: Path) -> list[dict[str, Any]]:
    from ..train import train

    rows = []
    # every model scored on the same validation bytes, whatever its context: the shortest one's blocks
    scored = min(int(model_config(name)["seq_len"]) for name in bc["models"])
    for name in bc["models"]:
        cfg = train_config(
            base, name, max_time=float(bc["budget_s"]), epochs=None, max_steps=None,
            eval_interval=10**9, eval_windows=int(bc["eval_windows"]), eval_scored=scored, checkpoint_interval=None,
        )
        print(f"quality {name}: training for {bc['budget_s']} s", file=sys.stderr, flush=True)
        with contextlib.redirect_stdout(sys.stderr):  # stdout stays the tables alone
            result = train(cfg, out_dir / "quality" / name)
        rows.append({
            "model": name,
            "parameters": result["parameters"],
            "precision": result["precision"],
            "budget_s": float(bc["budget_s"]),
            "steps": result["step"],
            "bytes_seen": result["bytes_seen"],
            "val_bpb": result["val_bpb"],
        })
    ref = next((r for r in rows if r["model"] == bc.get("baseline")), None)
    for row in rows:
        row["bpb_vs_baseline"] = row["val_bpb"] / ref["val_bpb"] if ref else None
    return rows


# ------------------------------------------------------------------ tables
def _fmt(v: Any, spec: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return format(v, spec)


def markdown(results: dict[str, Any]) -> str:
    """Every measured section as a Markdown table."""
    out = []
    env = results["environment"]
    out.append(f"Machine: {env['device']}, {env['threads']} threads, torch {env['torch']}.\n")
    if "peak" in results:
        out += ["### Matmul peak (reference for MFU)\n", "| precision | GFLOP/s | at n×n, n= |", "|---|---:|---:|"]
        out += [f"| {p} | {r['gflops']:.0f} | {r['size']} |" for p, r in results["peak"].items()]
        out.append("")
    if "throughput" in results:
        out += ["### Training throughput\n",
                "| model | params | precision | batch×seq | bytes/s | train GFLOP/byte | GFLOP/s | MFU |",
                "|---|---:|---|---|---:|---:|---:|---:|"]
        out += [f"| {r['model']} | {r['parameters'] / 1e6:.2f}M | {r['precision']} | {r['batch_size']}×{r['seq_len']} "
                f"| {r['bytes_per_s']:,.0f} | {r['train_flops_per_byte'] / 1e9:.4f} | {r['achieved_gflops']:.1f} "
                f"| {_fmt(r['mfu'] and 100 * r['mfu'], '.1f')}% |" for r in results["throughput"]]
        out.append("")
    if "scaling" in results:
        ref = results["config"]["scaling"]["reference_seq_len"]
        out += [f"### Cost per byte as seq_len grows ({results['config']['scaling']['precision']}, "
                f"{results['config']['scaling']['bytes_per_step']} bytes per step)\n",
                f"| model | seq_len | batch | µs/byte | bytes/s | × vs seq_len={ref} | activation MiB | peak MiB |",
                "|---|---:|---:|---:|---:|---:|---:|---:|"]
        out += [f"| {r['model']} | {r['seq_len']} | {r['batch_size']} | {r['us_per_byte']:.1f} | {r['bytes_per_s']:,.0f} "
                f"| {_fmt(r['cost_vs_ref'], '.2f')} | {r['activation_mib']:.0f} | {_fmt(r.get('peak_mib'), '.0f')} |"
                for r in results["scaling"]]
        out.append("")
    if "quality" in results:
        base = results["config"]["quality"].get("baseline")
        out += [f"### Quality per time (data: {results['data']})\n",
                f"| model | params | precision | budget s | steps | bytes seen | val bits/byte | × {base} |",
                "|---|---:|---|---:|---:|---:|---:|---:|"]
        out += [f"| {r['model']} | {r['parameters'] / 1e6:.2f}M | {r['precision']} | {r['budget_s']:.0f} | {r['steps']} "
                f"| {r['bytes_seen']:,} | {r['val_bpb']:.4f} | {_fmt(r['bpb_vs_baseline'], '.3f')} |"
                for r in results["quality"]]
        out.append("")
    return "\n".join(out)


# -------------------------------------------------------------------- main
def check(cfg: dict[str, Any]) -> None:
    """Every bench option, before anything is measured (a typo must not wait for an hour of measuring)."""
    bc = cfg["bench"]
    unknown = sorted(set(bc["sections"]) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"bench.sections has unknown {unknown}; choose from {list(SECTIONS)}")
    for section in ("throughput", "scaling"):
        bad = sorted(set(bc[section].get("precisions", [bc[section].get("precision")])) - set(MATMUL_DTYPES))
        if section in bc["sections"] and bad:
            raise ConfigError(f"bench.{section} precision {bad} is not one of {list(MATMUL_DTYPES)}")
    for section in ("throughput", "scaling", "quality"):
        if section in bc["sections"]:
            for name in bc[section]["models"]:
                model_config(name)
    seq_len = bc["throughput"].get("seq_len")
    if "throughput" in bc["sections"] and seq_len is not None and not is_int(seq_len):
        raise ConfigError(f"bench.throughput.seq_len={seq_len!r} must be null (each preset's) or an integer >= 1")


def run_bench(cfg: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Run the selected sections, write ``results.json`` and ``bench.md`` into ``out_dir``, return the results."""
    check(cfg)
    bc = cfg["bench"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg["trainer"].get("num_threads"):
        torch.set_num_threads(int(cfg["trainer"]["num_threads"]))
    device = resolve_device(cfg["trainer"]["device"])
    results: dict[str, Any] = {
        "environment": environment(device),
        "config": bc,
        "data": cfg["data"].get("path") or "default corpus",
    }
    if "peak" in bc["sections"] or "throughput" in bc["sections"]:
        results["peak"] = run_peak(bc["peak"], device)
    if "throughput" in bc["sections"]:
        results["throughput"] = run_throughput(cfg, bc["throughput"], out_dir, results["peak"])
    if "scaling" in bc["sections"]:
        results["scaling"] = run_scaling(cfg, bc["scaling"], out_dir)
    if "quality" in bc["sections"]:
        results["quality"] = run_quality(cfg, bc["quality"], out_dir)
    table = markdown(results)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "bench.md").write_text(table + "\n")
    return results


def _hydra_entry(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    with one_line_errors():
        results = run_bench(to_plain(cfg), out_dir)
        print(markdown(results))
        print(f"raw results: {out_dir / 'results.json'}", file=sys.stderr)


def main() -> None:
    """``python -m lfbyte.bench [key=value ...]``; see conf/bench.yaml."""
    hydra_cli("bench", _hydra_entry, check=check)


if __name__ == "__main__":
    main()
