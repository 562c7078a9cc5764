"""One AdaptiveLinear forward (no grad, fp32, 1 thread) at few and many positions: the two-matmul form against the
folded one ([W U] [x; g ⊙ V x], which copies [W U] on each call). Why AdaptiveLinear folds only for as many
positions as outputs.

    python experiments/cpu_speed/adaptive_rows.py
"""

import time

import torch
import torch.nn.functional as F
from torch import Tensor

from lfbyte.model import AdaptiveLinear


def two(m: AdaptiveLinear, x: Tensor, c: Tensor) -> Tensor:
    y, low = F.linear(x, m.weight_down).split([m.out_features, m.rank], dim=-1)
    return y + F.linear(low * m.gate(c), m.up)


def folded(m: AdaptiveLinear, x: Tensor, c: Tensor) -> Tensor:
    low = F.linear(x, m.down) * m.gate(c)
    return F.linear(torch.cat([x, low], dim=-1), torch.cat([m.weight, m.up], dim=1))


if __name__ == "__main__":
    torch.set_num_threads(1)
    print("| in -> out, rank | positions | two matmuls (us) | folded (us) |")
    print("|---|---:|---:|---:|")
    for d, r in [(64, 8), (256, 16)]:  # tiny's and small's in_proj
        m = AdaptiveLinear(d, 4 * d + 4, d // 4, r, bias=False)
        for rows in (1, 16, 1024):
            x, c = torch.randn(rows, d), torch.randn(rows, d // 4)
            reps = max(50, 20000 // rows)
            times = []
            with torch.no_grad():
                for fn in (two, folded):
                    for _ in range(20):
                        fn(m, x, c)
                    start = time.perf_counter()
                    for _ in range(reps):
                        fn(m, x, c)
                    times.append((time.perf_counter() - start) / reps * 1e6)
            print(f"| {d} -> {4 * d + 4}, {r} | {rows} | {times[0]:,.1f} | {times[1]:,.1f} |")
