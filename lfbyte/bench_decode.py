"""Decoding speed, cached vs uncached, at several context lengths.

    python -m lfbyte.bench_decode [model=small] [seq_len=1024] [contexts=[64,256,512,960]] [new_bytes=64] [repeats=5]

Builds ``conf/model/<model>.yaml`` with random weights (speed does not depend on them) and
``seq_len`` raised so the longest context fits, fills each context with random bytes, then
times ``new_bytes`` greedy steps two ways: *cached* (one byte through the per-layer decode
state per step, what generation uses) and *uncached* (the whole window re-run per step).
The prefill is not timed: the figures are steady-state bytes/s with that much context.
Prints a Markdown table: medians over ``repeats`` interleaved (uncached, cached) pairs. Run it
alone on the machine.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import torch

from .config import model_preset
from .errors import ConfigError, LFByteError
from .generate import Decoder, sample_byte
from .model import build_model

DEFAULTS: dict[str, Any] = {
    "model": "small",
    "seq_len": 1024,
    "contexts": [64, 256, 512, 960],
    "new_bytes": 64,
    "repeats": 5,
    "device": "cpu",
    "num_threads": None,
    "seed": 0,
}


def bytes_per_second(model: torch.nn.Module, context: list[int], new_bytes: int, use_cache: bool) -> float:
    decoder = Decoder(model, keep=model.config.seq_len, use_cache=use_cache)
    logits = decoder.feed(context)  # prefill, untimed
    if decoder.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(new_bytes):
        logits = decoder.feed([sample_byte(logits, temperature=0)])  # .cpu() in sampling syncs the GPU
    return new_bytes / (time.perf_counter() - start)


def run(cfg: dict[str, Any]) -> str:
    model_cfg = {**model_preset(str(cfg["model"])), "seq_len": int(cfg["seq_len"]), "dropout": 0.0}
    contexts = [int(c) for c in cfg["contexts"]]
    new_bytes = int(cfg["new_bytes"])
    if max(contexts) + new_bytes > model_cfg["seq_len"]:
        raise ConfigError(f"the longest context {max(contexts)} + new_bytes={new_bytes} must fit seq_len="
                          f"{model_cfg['seq_len']}; raise seq_len=")
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg["num_threads"]))
    torch.manual_seed(int(cfg["seed"]))
    model = build_model(model_cfg).to(cfg["device"]).eval()
    rows = []
    for n in contexts:
        context = torch.randint(0, 256, (n,)).tolist()
        bytes_per_second(model, context[:8], 4, use_cache=True)  # warm-up
        # Interleaved pairs: load from other processes then hits both paths alike; the speed-up is
        # the median of the paired ratios.
        pairs = [
            (bytes_per_second(model, context, new_bytes, False), bytes_per_second(model, context, new_bytes, True))
            for _ in range(int(cfg["repeats"]))
        ]
        uncached, cached = (statistics.median(r) for r in zip(*pairs, strict=True))
        speedup = statistics.median(c / u for u, c in pairs)
        rows.append(f"| {n} | {uncached:,.0f} | {cached:,.0f} | {speedup:.1f}× |")
    args = " ".join(sys.argv[1:])
    header = [
        f"`python -m lfbyte.bench_decode{' ' + args if args else ''}`  ",
        f"model={cfg['model']} ({model.num_parameters() / 1e6:.2f}M params, seq_len {model_cfg['seq_len']}, random "
        f"weights), {new_bytes} greedy bytes per measurement, median of {cfg['repeats']} interleaved pairs, device {cfg['device']}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "",
        "| context (bytes) | uncached (bytes/s) | cached (bytes/s) | speed-up |",
        "|---:|---:|---:|---:|",
    ]
    return "\n".join(header + rows)


def main() -> None:
    from omegaconf import OmegaConf  # CLI parsing only: run() needs torch and yaml alone

    try:
        overrides = OmegaConf.to_container(OmegaConf.from_cli(sys.argv[1:]))
        unknown = sorted(set(overrides) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown}; known: {sorted(DEFAULTS)}")
        print(run({**DEFAULTS, **overrides}), flush=True)
    except LFByteError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
