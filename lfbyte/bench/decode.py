"""Decoding speed, cached vs uncached, at several context lengths.

    python -m lfbyte.bench.decode [preset=small] [seq_len=1024] ['contexts=[64,256,512,960]'] [new_bytes=64] [repeats=5]

Builds ``conf/model/<preset>.yaml`` with random weights (speed does not depend on them) and
``seq_len`` raised so the longest context fits, fills each context with random bytes, then
times ``new_bytes`` greedy steps two ways: *cached* (one byte through the per-layer decode
state per step, what generation uses) and *uncached* (the whole window re-run per step).
The prefill is not timed: the figures are steady-state bytes/s with that much context.
Prints a Markdown table: medians over ``repeats`` interleaved (uncached, cached) pairs. Run it
alone on the machine.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from omegaconf import DictConfig

from ..cli import hydra_cli, one_line_errors
from ..config import check_threads, is_int, model_preset, to_plain
from ..device import resolve_device
from ..errors import ConfigError
from ..generate import Decoder, sample_byte
from ..model import build_model
from .common import command, environment, sync


def bytes_per_second(model: torch.nn.Module, context: list[int], new_bytes: int, use_cache: bool) -> float:
    decoder = Decoder(model, keep=model.config.seq_len, use_cache=use_cache)
    logits = decoder.feed(context)  # prefill, untimed
    sync(decoder.device)
    start = time.perf_counter()
    for _ in range(new_bytes):
        logits = decoder.feed([sample_byte(logits, temperature=0)])  # .cpu() in sampling syncs the GPU
    return new_bytes / (time.perf_counter() - start)


def check(cfg: dict[str, Any]) -> None:
    """Every option, before the model is built."""
    model_preset(str(cfg["preset"]))
    for key in ("seq_len", "new_bytes", "repeats"):
        if not is_int(cfg[key]):
            raise ConfigError(f"{key}={cfg[key]!r} must be an integer >= 1")
    if not isinstance(cfg["seed"], int) or isinstance(cfg["seed"], bool):
        raise ConfigError(f"seed={cfg['seed']!r} must be an integer")
    contexts = cfg["contexts"]
    if not isinstance(contexts, list) or not contexts or not all(is_int(c) for c in contexts):
        raise ConfigError(f"contexts={contexts!r} must be a list of integers >= 1, e.g. 'contexts=[64,256]'")
    if max(contexts) + cfg["new_bytes"] > cfg["seq_len"]:
        raise ConfigError(f"the longest context {max(contexts)} + new_bytes={cfg['new_bytes']} must fit seq_len="
                          f"{cfg['seq_len']}; raise seq_len=")
    check_threads(cfg["num_threads"])
    resolve_device(cfg["device"], "device")


def run(cfg: dict[str, Any]) -> str:
    """The Markdown table for one configuration (``conf/bench_decode.yaml``'s keys)."""
    check(cfg)
    model_cfg = {**model_preset(str(cfg["preset"])), "seq_len": int(cfg["seq_len"]), "dropout": 0.0}
    contexts = [int(c) for c in cfg["contexts"]]
    new_bytes = int(cfg["new_bytes"])
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg["num_threads"]))
    torch.manual_seed(int(cfg["seed"]))
    device = resolve_device(cfg["device"], "device")
    model = build_model(model_cfg).to(device).eval()
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
    env = environment(device)
    header = [
        f"`{command('lfbyte.bench.decode')}`  ",
        f"model={cfg['preset']} ({model.num_parameters() / 1e6:.2f}M params, seq_len {model_cfg['seq_len']}, random "
        f"weights), {new_bytes} greedy bytes per measurement, median of {cfg['repeats']} interleaved pairs, {env['device']}, "
        f"{env['threads']} torch threads, torch {env['torch']}",
        "",
        "| context (bytes) | uncached (bytes/s) | cached (bytes/s) | speed-up |",
        "|---:|---:|---:|---:|",
    ]
    return "\n".join(header + rows)


def _hydra_entry(cfg: DictConfig) -> None:
    with one_line_errors():
        print(run(to_plain(cfg)), flush=True)


def main() -> None:
    """``python -m lfbyte.bench.decode [key=value ...]``; see conf/bench_decode.yaml."""
    hydra_cli("bench_decode", _hydra_entry, flat=True, check=check)


if __name__ == "__main__":
    main()
