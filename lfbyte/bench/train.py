"""``python -m lfbyte.bench.train``: training throughput, fp32 vs bf16 and 1 vs N DDP processes.

Every variant trains the same model on the same global batch for the same number of
steps, one after another in this one command, and the table reports the median
bytes/s over the logged windows after warm-up (start-up and evaluation excluded).
The CPU threads are split evenly between DDP processes so the variants use the
same cores. Run it alone on the machine: a busy neighbour distorts every number.

    python -m lfbyte.bench.train preset=small steps=40 'precisions=[fp32,bf16]' 'procs=[1,2]'
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from omegaconf import DictConfig

from ..cli import hydra_cli, one_line_errors
from ..config import is_int, model_preset, to_plain, usable_cpus
from ..errors import ConfigError
from .common import command


def measure(model: str, precision: str, procs: int, steps: int, global_batch: int, threads: int,
            extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            f"model={model}", f"trainer.precision={precision}", "trainer.epochs=null",
            f"trainer.max_steps={steps}", f"trainer.batch_size={global_batch // procs}",
            f"trainer.num_threads={max(1, threads // procs)}", "trainer.log_interval=5",
            f"trainer.eval_interval={steps * 10}", "trainer.eval_windows=4", "trainer.progress=false",
            f"hydra.run.dir={tmp}", *extra,
        ]
        if procs > 1:
            args += ["distributed=ddp", f"distributed.nproc_per_node={procs}"]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads // procs))}
        proc = subprocess.run([sys.executable, "-m", "lfbyte.train", *args], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise ConfigError(f"variant {precision} x{procs} failed (exit {proc.returncode}): {last[:300]}")
        rows = [json.loads(r) for r in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
        rates = [r["bytes_per_s"] for r in rows if "bytes_per_s" in r and r["step"] > 5]
        metrics = json.loads((Path(tmp) / "metrics.json").read_text())
    return {"bytes_per_s": statistics.median(rates), "params": metrics["parameters"]}


def check(cfg: dict) -> None:
    """Every option before the first variant trains: a typo must not surface after minutes of measuring."""
    model_preset(str(cfg["preset"]))
    for key in ("steps", "global_batch"):
        if not is_int(cfg[key]):
            raise ConfigError(f"{key}={cfg[key]!r} must be an integer >= 1")
    if cfg["threads"] is not None and not is_int(cfg["threads"]):
        raise ConfigError(f"threads={cfg['threads']!r} must be null (every core) or an integer >= 1")
    bad = [p for p in cfg["precisions"] if p not in ("fp32", "bf16", "fp16")]
    if not cfg["precisions"] or bad:
        raise ConfigError(f"precisions={cfg['precisions']!r}: each must be fp32, bf16 or fp16")
    cpus = usable_cpus()
    bad = [n for n in cfg["procs"] if not is_int(n, 1, cpus)]
    if not cfg["procs"] or bad:
        raise ConfigError(f"procs={cfg['procs']!r}: each must be an integer in 1..{cpus} (this machine's cores)")
    for n in cfg["procs"]:
        if cfg["global_batch"] % n:
            raise ConfigError(f"global_batch={cfg['global_batch']} must divide evenly between procs={n}")
    if not isinstance(cfg["extra"], list):
        raise ConfigError(f"extra={cfg['extra']!r} must be a list of lfbyte.train overrides, e.g. ['data.path=f.txt']")


def run(cfg: dict) -> None:
    threads = cfg["threads"] or os.cpu_count() or 1
    results = []
    for precision in cfg["precisions"]:
        for procs in cfg["procs"]:
            r = measure(cfg["preset"], precision, int(procs), int(cfg["steps"]), int(cfg["global_batch"]), threads,
                        list(cfg["extra"]))
            results.append((precision, int(procs), r))
            print(f"  measured {precision} x{procs}: {r['bytes_per_s']:,.0f} bytes/s", file=sys.stderr, flush=True)
    base = results[0][2]["bytes_per_s"]
    print(f"\n`{command('lfbyte.bench.train')}`  \nmodel={cfg['preset']} ({results[0][2]['params']:,} parameters), "
          f"global batch {cfg['global_batch']} windows, {cfg['steps']} steps, {threads} CPU threads in all\n")
    print("| precision | processes | threads/process | bytes/s | vs first row |")
    print("|---|---:|---:|---:|---:|")
    for precision, procs, r in results:
        print(f"| {precision} | {procs} | {max(1, threads // procs)} | {r['bytes_per_s']:,.0f} | "
              f"{r['bytes_per_s'] / base:.2f}x |")


def _hydra_entry(cfg: DictConfig) -> None:
    with one_line_errors():
        run(to_plain(cfg))


def main() -> None:
    """``python -m lfbyte.bench.train [key=value ...]``; see conf/bench_train.yaml."""
    hydra_cli("bench_train", _hydra_entry, flat=True, check=check)


if __name__ == "__main__":
    main()
