"""``python -m lfbyte.bench_train``: training throughput, fp32 vs bf16 and 1 vs N DDP processes.

Every variant trains the same model on the same global batch for the same number of
steps, one after another in this one command, and the table reports the median
bytes/s over the logged windows after warm-up (start-up and evaluation excluded).
The CPU threads are split evenly between DDP processes so the variants use the
same cores. Run it alone on the machine: a busy neighbour distorts every number.

    python -m lfbyte.bench_train preset=small steps=40 'precisions=[fp32,bf16]' 'procs=[1,2]'
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import hydra
from omegaconf import DictConfig

from .config import CONF_DIR


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
            raise SystemExit(f"error: variant {precision} x{procs} failed:\n{proc.stderr[-2000:]}")
        rows = [json.loads(r) for r in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
        rates = [r["bytes_per_s"] for r in rows if "bytes_per_s" in r and r["step"] > 5]
        metrics = json.loads((Path(tmp) / "metrics.json").read_text())
    return {"bytes_per_s": statistics.median(rates), "params": metrics["parameters"]}


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="bench_train")
def main(cfg: DictConfig) -> None:
    threads = cfg.threads or os.cpu_count() or 1
    results = []
    for precision in cfg.precisions:
        for procs in cfg.procs:
            r = measure(cfg.preset, precision, int(procs), int(cfg.steps), int(cfg.global_batch), threads,
                        list(cfg.extra))
            results.append((precision, int(procs), r))
            print(f"  measured {precision} x{procs}: {r['bytes_per_s']:,.0f} bytes/s", file=sys.stderr, flush=True)
    base = results[0][2]["bytes_per_s"]
    print(f"\nmodel={cfg.preset} ({results[0][2]['params']:,} parameters), global batch {cfg.global_batch} windows, "
          f"{cfg.steps} steps, {threads} CPU threads in all\n")
    print("| precision | processes | threads/process | bytes/s | vs first row |")
    print("|---|---:|---:|---:|---:|")
    for precision, procs, r in results:
        print(f"| {precision} | {procs} | {max(1, threads // procs)} | {r['bytes_per_s']:,.0f} | "
              f"{r['bytes_per_s'] / base:.2f}x |")


if __name__ == "__main__":
    main()
