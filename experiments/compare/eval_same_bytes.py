"""Score runs trained at different contexts on the same validation bytes.

The trainer scores a run on 256 windows of its own ``model.seq_len`` and averages every position, so a run with a
longer context is scored on other bytes, and with more context per byte. This scores every run on one set of bytes:
the validation split from byte ``--offset`` on, in blocks of ``--block`` bytes, each block predicted with the
``seq_len - block`` bytes before it as context (positions before the block are masked out of the loss). A run at
``seq_len == block`` is scored exactly as its windows are trained; a longer one sees more of the past, which is what
its longer context buys. Runs must share the corpus and ``data.val_fraction``. This scores runs already trained, on
every block from ``--offset`` on (about 1,300 on the default corpus). Since 2026-12-03 the trainer can score this way
during training, ``trainer.eval_scored`` (64 in ``trainer=budget``), but on ``trainer.eval_windows`` evenly spaced
blocks: its numbers are comparable across contexts, not equal to this script's.

    python experiments/compare/eval_same_bytes.py outputs/multirun/amx_2min_ctx/*/seed*      # from the repo root
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from lfbyte.data import load_corpus, split_corpus  # noqa: E402 - after the repo root joins the path
from lfbyte.runs import load_run  # noqa: E402


@torch.no_grad()
def score(run_dir: Path, block: int, offset: int, batch: int) -> tuple[float, int, int]:
    """(bits/byte on the scored bytes, bytes scored, the run's seq_len)."""
    run = load_run(run_dir, device="cpu")
    model, cfg = run.model.eval(), run.config
    seq_len = int(cfg["model"]["seq_len"])
    if seq_len < block or seq_len - block + 1 > offset:
        raise SystemExit(f"{run_dir}: seq_len {seq_len} needs block <= seq_len <= offset + block - 1")
    corpus = load_corpus(cfg["data"].get("path"))
    _, val = split_corpus(corpus, float(cfg["data"]["val_fraction"]), seq_len)
    firsts = np.arange(val.lo + offset, val.hi - block + 1, block)  # first scored byte of each block
    total, count = 0.0, 0
    for i in range(0, len(firsts), batch):
        p = firsts[i : i + batch, None]
        start = p - seq_len + block - 1  # input bytes start..start+seq_len-1 predict start+1..start+seq_len
        tok = torch.from_numpy(corpus.tokens(start + np.arange(seq_len + 1)))
        x, y = tok[:, :-1], tok[:, 1:].clone()
        y[:, : seq_len - block] = -1  # context only: not scored
        out = model(x, y)
        n = int((y >= 0).sum())
        total += float(out.loss) * n
        count += n
    return total / count / math.log(2), count, seq_len


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--block", type=int, default=64, help="bytes scored per window (the shortest context)")
    ap.add_argument("--offset", type=int, default=512, help="first scored byte of the split (>= longest context)")
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| run | seq_len | bits/byte on the same bytes | bytes scored |")
    print("|---|---:|---:|---:|")
    for run in args.runs:
        bpb, n, seq_len = score(run, args.block, args.offset, args.batch)
        print(f"| {run} | {seq_len} | {bpb:.4f} | {n:,} |", flush=True)


if __name__ == "__main__":
    main()
