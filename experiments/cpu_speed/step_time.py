"""Training step time (forward, backward, fused AdamW) of LFByteTransformer shapes, eager fp32, 1 thread:
AdaptiveLinear's forward as two matmuls (W x and V x fused, then U (g ⊙ V x): before 2026-12-02) against the
current one ([W U] [x; g ⊙ V x]), alternated every 5 steps in one process so that the machine's drift hits both.

    python experiments/cpu_speed/step_time.py
Prints a markdown table (median ms per step over the windows); run it alone on the machine.
"""

import statistics
import time

import torch
import torch.nn.functional as F
from torch import Tensor

from lfbyte.model import AdaptiveLinear, LFByteTransformer

SHAPES = {  # batch x 64 bytes, as the 2- and 10-minute recipes train
    "tiny (d64, 2 layers, E2 top-1)": (16, dict(embed_dim=64, num_layers=2, num_heads=2, adapt_dim=16, num_experts=2,
                                                 top_k=1, chunk_size=16)),
    "tiny at 4 layers": (16, dict(embed_dim=64, num_layers=4, num_heads=2, adapt_dim=16, num_experts=2, top_k=1,
                                  chunk_size=16)),
    "mini (d128, 4 layers, E4 top-2)": (12, dict(embed_dim=128, num_layers=4, num_heads=4, adapt_dim=32,
                                                  num_experts=4, top_k=2, chunk_size=32)),
}
CURRENT = AdaptiveLinear.forward


def two_matmuls(self: AdaptiveLinear, x: Tensor, c: Tensor | None) -> Tensor:
    y, low = F.linear(x, self.weight_down).split([self.out_features, self.rank], dim=-1)
    y = y + F.linear(low * self.gate(c), self.up)
    return y if self.bias is None else y + self.bias


def compare(batch: int, cfg: dict, windows: int = 12, per_window: int = 5) -> dict[str, float]:
    torch.manual_seed(0)
    model = LFByteTransformer(seq_len=64, adapt_rank=8, **cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x, y = torch.randint(0, 256, (batch, 64)), torch.randint(0, 256, (batch, 64))
    times: dict[str, list[float]] = {"two matmuls": [], "one matmul": []}
    for w in range(windows + 1):
        for name, forward in (("two matmuls", two_matmuls), ("one matmul", CURRENT)):
            AdaptiveLinear.forward = forward
            start = time.perf_counter()
            for _ in range(per_window):
                out = model(x, y)
                opt.zero_grad()
                (out.loss + out.aux_loss).backward()
                opt.step()
            if w:  # the first window of each warms up
                times[name].append((time.perf_counter() - start) / per_window * 1e3)
    AdaptiveLinear.forward = CURRENT
    return {name: statistics.median(t) for name, t in times.items()}


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, median of 12 windows of 5 steps each, alternating\n")
    print("| shape | batch | two matmuls (ms/step) | one matmul (ms/step) | speed-up |")
    print("|---|---|---:|---:|---:|")
    for name, (batch, cfg) in SHAPES.items():
        ms = compare(batch, cfg)
        print(f"| {name} | {batch} x 64 | {ms['two matmuls']:.1f} | {ms['one matmul']:.1f} | "
              f"{ms['two matmuls'] / ms['one matmul']:.2f}x |")
