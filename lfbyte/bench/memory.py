"""``python -m lfbyte.bench.memory``: what one rank holds under DDP and FSDP, measured, and what that means
for the largest model a GPU fits.

Each variant spawns its processes, builds the real :class:`~lfbyte.trainer.Trainer` (so the sharding is the
one training uses), runs one forward/backward and one AdamW step, and sums the bytes of the tensors each rank
holds: parameters, gradients, optimizer state (under FSDP, each rank's local shard of each). From the
measured bytes per parameter per rank (``fixed + sharded / N`` for FSDP, fitted on the measured process
counts), the second table scales the preset in depth (more blocks of the same width) to the largest model
whose states, plus the activations the memory estimator traces for one micro-batch (and, under FSDP, the one
block gathered whole for its forward and backward), fit ``gpu_gb`` on each of ``gpus`` GPUs.

    python -m lfbyte.bench.memory preset=base 'procs=[1,2]'
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from ..cli import hydra_cli, one_line_errors
from ..config import CONF_DIR, is_int, model_preset, to_plain, usable_cpus
from ..distributed import DistInfo, accumulate, spawn
from ..errors import ConfigError
from .common import command, environment

GB = 1e9


def local_bytes(t: torch.Tensor | None) -> int:
    """Bytes of the part of ``t`` this process holds (a DTensor's local shard)."""
    if t is None:
        return 0
    from torch.distributed.tensor import DTensor

    local = t.to_local() if isinstance(t, DTensor) else t
    return local.numel() * local.element_size()


def _measure_rank(info: DistInfo, cfg: dict[str, Any], out: str) -> None:
    from ..trainer import Trainer

    trainer = Trainer(cfg, Path(out) / "run", info)
    try:
        model = trainer.model
        starts = trainer.sampler.step_batches(trainer.batch_size, 1, info.rank, info.world_size)[0]
        x, y = trainer.sampler.read(starts)
        with accumulate(trainer.model if trainer.sharded else trainer.train_model, last=True):
            res = trainer.train_model(x.to(trainer.device), y.to(trainer.device))
            res.training_loss.backward()
        params = list(model.parameters())
        row = {
            "rank": info.rank,
            "parameters": sum(local_bytes(p) for p in params),
            "gradients": sum(local_bytes(p.grad) for p in params),
        }
        trainer.optimizer.step()
        row["optimizer"] = sum(local_bytes(v) for st in trainer.optimizer.state.values() for v in st.values()
                               if isinstance(v, torch.Tensor) and v.dim() > 0)  # not the scalar step counts
        row["count"] = model.num_parameters()
        if trainer.device.type == "cuda":
            row["peak_allocated"] = torch.cuda.max_memory_allocated(trainer.device)
        (Path(out) / f"rank{info.rank}.json").write_text(json.dumps(row))
    finally:
        trainer.close(completed=True)


def measure(cfg: dict[str, Any], strategy: str, procs: int) -> list[dict[str, Any]]:
    """One row per rank: the bytes it holds after a real step of ``strategy`` on ``procs`` processes."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = [f"model={cfg['preset']}", f"distributed={strategy}", f"distributed.nproc_per_node={procs}",
                 f"trainer.batch_size={cfg['batch_size']}", "trainer.num_threads=1", "trainer.precision=fp32",
                 "trainer.progress=false", "trainer.sample_length=0", "logger=none", *cfg["extra"]]
    if GlobalHydra.instance().is_initialized():  # inside python -m lfbyte.bench.memory: Hydra already reads conf/
        train_cfg = to_plain(compose("train", overrides=overrides))
    else:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            train_cfg = to_plain(compose("train", overrides=overrides))
    with tempfile.TemporaryDirectory() as tmp:
        spawn(_measure_rank, procs, (train_cfg, tmp), train_cfg["distributed"]["master_addr"])
        return [json.loads((Path(tmp) / f"rank{r}.json").read_text()) for r in range(procs)]


def _largest(cfg: dict[str, Any], per_param: float, sharded: bool) -> tuple[int, float]:
    """The most blocks of the preset's shape whose per-rank memory fits ``gpu_gb``; (blocks, parameters).

    Parameters and activations grow by the same amount with every block (the estimator measures one- and
    two-block models on the meta device), so the need is linear in the block count."""
    from ..resources import estimate_memory, gathered_block

    model = model_preset(cfg["preset"])
    trainer = {"batch_size": cfg["batch_size"], "device": "cpu", "accumulation_steps": 1}
    e1, e2 = (estimate_memory({"model": {**model, "num_layers": n}, "trainer": trainer, "distributed": {}})
              for n in (1, 2))
    block_params, block_acts = e2.parameters - e1.parameters, e2.activations - e1.activations
    gathered = gathered_block(block_params) if sharded else 0.0
    fixed = per_param * e1.parameters + e1.activations + max(e1.largest, e2.largest) + gathered
    per_block = per_param * block_params + block_acts
    blocks = 1 + int((cfg["gpu_gb"] * GB - fixed) // per_block) if fixed <= cfg["gpu_gb"] * GB else 0
    return blocks, e1.parameters + block_params * (blocks - 1) if blocks else 0.0


def check(cfg: dict[str, Any]) -> None:
    model_preset(str(cfg["preset"]))
    bad = [s for s in cfg["strategies"] if s not in ("ddp", "fsdp")]
    if not cfg["strategies"] or bad:
        raise ConfigError(f"strategies={cfg['strategies']!r}: each must be ddp or fsdp")
    cpus = usable_cpus()
    if not cfg["procs"] or any(not is_int(n, 1, cpus) for n in cfg["procs"]):
        raise ConfigError(f"procs={cfg['procs']!r}: each must be an integer in 1..{cpus} (this machine's cores)")
    if "fsdp" in cfg["strategies"] and len(set(cfg["procs"])) < 2:
        raise ConfigError(f"procs={cfg['procs']!r}: FSDP's per-rank memory is fitted over two or more process "
                          "counts, e.g. procs=[1,2]")
    for key in ("batch_size", "gpus"):
        if not is_int(cfg[key]):
            raise ConfigError(f"{key}={cfg[key]!r} must be an integer >= 1")
    if not isinstance(cfg["gpu_gb"], (int, float)) or isinstance(cfg["gpu_gb"], bool) or cfg["gpu_gb"] <= 0:
        raise ConfigError(f"gpu_gb={cfg['gpu_gb']!r} must be a number > 0")
    if not isinstance(cfg["extra"], list):
        raise ConfigError(f"extra={cfg['extra']!r} must be a list of lfbyte.train overrides")


def run(cfg: dict[str, Any]) -> None:
    rows: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for strategy in cfg["strategies"]:
        for procs in sorted(set(cfg["procs"])):
            rows[strategy, procs] = measure(cfg, strategy, int(procs))
            print(f"  measured {strategy} x{procs}", file=sys.stderr, flush=True)
    count = next(iter(rows.values()))[0]["count"]
    env = environment(torch.device("cpu"))
    print(f"\n`{command('lfbyte.bench.memory')}`  \nmodel={cfg['preset']} ({count:,} parameters, fp32 master "
          f"weights, AdamW), batch {cfg['batch_size']} per rank; {env['device']}, torch {env['torch']}\n")
    gpu = any("peak_allocated" in r for ranks in rows.values() for r in ranks)  # measured on CUDA only
    print("| strategy | processes | parameters / rank | gradients / rank | AdamW state / rank | total / rank | "
          "bytes per parameter / rank |" + (" peak allocated / rank |" if gpu else ""))
    print("|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if gpu else ""))
    per_rank: dict[tuple[str, int], float] = {}
    for (strategy, procs), ranks in rows.items():
        worst = max(ranks, key=lambda r: r["parameters"] + r["gradients"] + r["optimizer"])
        total = worst["parameters"] + worst["gradients"] + worst["optimizer"]
        per_rank[strategy, procs] = total / count
        print(f"| {strategy} | {procs} | {worst['parameters'] / 1e6:,.2f} MB | {worst['gradients'] / 1e6:,.2f} MB | "
              f"{worst['optimizer'] / 1e6:,.2f} MB | {total / 1e6:,.2f} MB | {total / count:.2f} |"
              + (f" {max(r.get('peak_allocated', 0) for r in ranks) / 1e6:,.0f} MB |" if gpu else ""))

    def fitted(strategy: str) -> Any:
        """bytes per parameter per rank on N processes: constant for DDP, fixed + sharded/N for FSDP."""
        pts = sorted((n, b) for (s, n), b in per_rank.items() if s == strategy)
        if strategy == "ddp":
            return lambda n: max(b for _, b in pts)
        (n1, b1), (n2, b2) = pts[0], pts[-1]
        sharded = (b1 - b2) / (1 / n1 - 1 / n2)
        fixed = b1 - sharded / n1
        return lambda n: fixed + sharded / n

    gpus = int(cfg["gpus"])
    print(f"\nLargest {cfg['preset']}-shaped model (more blocks of the same width) per {cfg['gpu_gb']} GB GPU, "
          f"{gpus} GPUs, batch {cfg['batch_size']} × seq_len per GPU, from the bytes per parameter measured above "
          "plus the estimated activations of one micro-batch (fp32; bf16 activations would fit more):\n")
    print("| strategy | bytes per parameter / rank | blocks | parameters |")
    print("|---|---:|---:|---:|")
    for strategy in cfg["strategies"]:
        per_param = fitted(strategy)
        layers, params = _largest(cfg, per_param(gpus), strategy == "fsdp")
        print(f"| {strategy} × {gpus} | {per_param(gpus):.2f} | {layers:,} | {params / 1e9:,.2f} B |")


def _hydra_entry(cfg: DictConfig) -> None:
    with one_line_errors():
        run(to_plain(cfg))


def main() -> None:
    """``python -m lfbyte.bench.memory [key=value ...]``; see conf/bench_memory.yaml."""
    hydra_cli("bench_memory", _hydra_entry, flat=True, check=check)


if __name__ == "__main__":
    main()
