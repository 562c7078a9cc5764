"""The causal convolution + SiLU alone, forward + backward, 1 thread, 16 x 64 positions: F.conv1d against
lfbyte's causal_conv_silu at the conditioner's width (16) and q, k, v's (192); median of 5 rounds x 20 reps.

    python experiments/cpu_speed/causal_conv_alone.py      # run it alone on the machine
"""

import statistics
import time

import torch
import torch.nn.functional as F

from lfbyte.model.causal_conv import causal_conv_silu


def time_width(channels: int, k: int = 4, b: int = 16, t: int = 64) -> dict[str, float]:
    u = torch.randn(b, t, channels, requires_grad=True)
    w = torch.randn(channels, k, requires_grad=True)
    bias = torch.zeros(channels, requires_grad=True)
    fns = {
        "conv1d": lambda: F.silu(F.conv1d(u.transpose(1, 2), w[:, None], bias, padding=k - 1,
                                          groups=channels)[..., :t].transpose(1, 2)),
        "causal_conv_silu": lambda: causal_conv_silu(u, w, bias)[0],
    }
    times: dict[str, list[float]] = {name: [] for name in fns}
    for rnd in range(6):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(20):
                fn().square().mean().backward()
            if rnd:  # round 0 warms up
                times[name].append((time.perf_counter() - start) / 20 * 1e3)
    return {name: round(statistics.median(ts), 3) for name, ts in times.items()}


if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.manual_seed(0)
    for channels in (16, 192):
        print(channels, "channels:", time_width(channels), "ms")
