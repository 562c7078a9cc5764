"""Decoding speed, cached vs uncached, at several context lengths.

    python -m lfbyte.bench.decode [preset=small] [seq_len=1024] ['contexts=[64,256,512,960]'] [new_bytes=64] [repeats=5]
                                  [compile=false] [device=cpu]

Builds ``conf/model/<preset>.yaml`` with random weights (speed does not depend on them) and
``seq_len`` raised so the longest context fits, fills each context with random bytes, then
times ``new_bytes`` greedy steps two ways: *cached* (one byte through the per-layer decode
state per step, what generation uses) and *uncached* (the whole window re-run per step).
The prefill is not timed: the figures are steady-state bytes/s with that much context.
``compile=true`` adds a third way: cached, with the one-byte step compiled (CUDA graphs on a GPU;
see :class:`lfbyte.generate.Decoder`); its compilation is in the untimed warm-up.
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


def bytes_per_second(
    model: torch.nn.Module, context: list[int], new_bytes: int, use_cache: bool, compile: bool = False
) -> float:
    decoder = Decoder(model, keep=model.config.seq_len, use_cache=use_cache, compile=compile)
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
    if not isinstance(cfg["compile"], bool):
        raise ConfigError(f"compile={cfg['compile']!r} must be true or false")
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
    compiled = bool(cfg["compile"])
    modes = [(False, False), (True, False)] + ([(True, True)] if compiled else [])  # (use_cache, compile)
    rows = []
    for n in contexts:
        context = torch.randint(0, 256, (n,)).tolist()
        for use_cache, comp in modes[1:]:  # warm-up (and the one compilation)
            bytes_per_second(model, context[:8], 4, use_cache, comp)
        # Interleaved: load from other processes then hits every path alike; speed-ups are medians of
        # the per-repeat ratios.
        runs = [[bytes_per_second(model, context, new_bytes, *mode) for mode in modes]
                for _ in range(int(cfg["repeats"]))]
        medians = [statistics.median(r) for r in zip(*runs, strict=True)]
        cells = [f"{m:,.0f}" for m in medians] + [f"{statistics.median(r[1] / r[0] for r in runs):.1f}×"]
        if compiled:
            cells.append(f"{statistics.median(r[2] / r[1] for r in runs):.2f}×")
        rows.append("| " + " | ".join([str(n), *cells]) + " |")
    env = environment(device)
    header = [
        f"`{command('lfbyte.bench.decode')}`  ",
        f"model={cfg['preset']} ({model.num_parameters() / 1e6:.2f}M params, seq_len {model_cfg['seq_len']}, random "
        f"weights), {new_bytes} greedy bytes per measurement, median of {cfg['repeats']} interleaved repeats, {env['device']}, "
        f"{env['threads']} torch threads, torch {env['torch']}",
        "",
        "| context (bytes) | uncached (bytes/s) | cached (bytes/s) | "
        + ("cached, compiled (bytes/s) | " if compiled else "") + "cached / uncached |"
        + (" compiled / cached |" if compiled else ""),
        "|" + "---:|" * (len(modes) + 2 + compiled),
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
