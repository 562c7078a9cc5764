"""One AdaptiveLinear, forward + backward, fp32, 1 thread: the low-rank part as a second matmul over `rank`
inputs (before 2026-12-02) vs folded into the main matmul ([W U] [x; g ⊙ V x], now), and a plain linear layer.

    python experiments/cpu_speed/adaptive_matmul.py
"""

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def us_per_call(fn: Callable, *args: object, reps: int = 200) -> float:
    for _ in range(10):
        fn(*args).sum().backward()
    start = time.perf_counter()
    for _ in range(reps):
        fn(*args).sum().backward()
    return (time.perf_counter() - start) / reps * 1e6


def two(x: Tensor, c: Tensor, wv: Tensor, u: Tensor, g: Tensor, g0: Tensor, out: int) -> Tensor:
    y, low = F.linear(x, wv).split([out, wv.shape[0] - out], -1)
    return y + F.linear(low * F.linear(c, g, g0), u)


def one(x: Tensor, c: Tensor, wv: Tensor, u: Tensor, g: Tensor, g0: Tensor, out: int) -> Tensor:
    low = F.linear(x, wv[out:]) * F.linear(c, g, g0)
    return F.linear(torch.cat([x, low], -1), torch.cat([wv[:out], u], 1))


def plain(x: Tensor, c: Tensor, wv: Tensor, u: Tensor, g: Tensor, g0: Tensor, out: int) -> Tensor:
    return F.linear(x, wv[:out])


if __name__ == "__main__":
    torch.set_num_threads(1)
    print("| rows x in -> out, rank | two matmuls (us) | one matmul (us) | plain linear (us) |")
    print("|---|---:|---:|---:|")
    for rows, d, out, r, a in [(1024, 64, 258, 8, 16), (768, 128, 516, 8, 32)]:  # tiny's and mini's in_proj
        x, c = torch.randn(rows, d, requires_grad=True), torch.randn(rows, a, requires_grad=True)
        wv, u = torch.randn(out + r, d, requires_grad=True), torch.randn(out, r, requires_grad=True)
        g, g0 = torch.randn(r, a, requires_grad=True), torch.randn(r, requires_grad=True)

        times = [us_per_call(f, x, c, wv, u, g, g0, out) for f in (two, one, plain)]
        print(f"| {rows} x {d} -> {out}, {r} | " + " | ".join(f"{t:,.0f}" for t in times) + " |")
