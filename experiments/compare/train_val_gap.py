"""How far each run's final validation loss sits above its last training losses (memorisation), in bits/byte.

    python experiments/compare/train_val_gap.py outputs/multirun/epyc_vimdocs_10min/lf256_lin0 [more sweep dirs]

Per run (``seed*/metrics.jsonl``): the last val_bpb minus the mean training loss of the last 10 logged steps
(nats -> bits), and the epochs seen. Positive: the model does better on text it trained on than on held-out text.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def gaps(sweep: Path) -> list[tuple[str, float, float]]:
    out = []
    for log in sorted(sweep.glob("seed*/metrics.jsonl")):
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        train = [r["train_loss"] for r in rows if "train_loss" in r][-10:]
        val = [r["val_bpb"] for r in rows if "val_bpb" in r]
        epoch = [r["epoch"] for r in rows if "epoch" in r]
        if train and val and epoch:
            out.append((log.parent.name, val[-1] - sum(train) / len(train) / math.log(2), epoch[-1]))
    return out


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        rows = gaps(Path(arg))
        print(arg, " ".join(f"{name}: {g:+.3f} ({e:.2f} epochs)" for name, g, e in rows))
