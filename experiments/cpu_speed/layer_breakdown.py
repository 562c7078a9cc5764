"""Where a training step's time goes on a CPU core: one layer of each architecture, forward + backward, fp32,
1 thread, its parts timed alone on the same input (batch x 64 bytes), median of rounds that alternate the parts.

    python experiments/cpu_speed/layer_breakdown.py [embed_dim ...]      # default: 64 128
Prints a markdown table per width; run it alone on the machine.
"""

import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import Tensor

from lfbyte.model import GPT, LFByteTransformer
from lfbyte.model.token_mixing import decay_mix


def fwd_bwd_ms(fn: Callable[[], Tensor], reps: int = 5) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn().float().square().mean().backward()
    return (time.perf_counter() - start) / reps * 1e3


def parts(d: int, batch: int) -> dict[str, Callable[[], Tensor]]:
    heads = max(2, d // 32)
    lf = LFByteTransformer(seq_len=64, embed_dim=d, num_layers=1, num_heads=heads, adapt_dim=d // 4, adapt_rank=8,
                           num_experts=4 if d >= 128 else 2, top_k=2 if d >= 128 else 1, chunk_size=32 if d >= 128 else 16)
    gpt = GPT(seq_len=64, embed_dim=d, num_layers=1, num_heads=heads)
    block, gblock = lf.blocks[0], gpt.blocks[0]
    x = torch.randn(batch, 64, d, requires_grad=True)
    c = torch.randn(batch, 64, d // 4, requires_grad=True)
    h = d // heads
    q, k, v = (torch.randn(batch, heads, 64, h, requires_grad=True) for _ in range(3))
    g = (-torch.rand(batch, heads, 64) * 0.1).requires_grad_()
    return {
        "LF block (all below, with norms)": lambda: block(x, None, None)[0],
        "  conditioner (proj + causal conv)": lambda: block.conditioner(x)[0],
        "  token mixing: AdaptiveLinear in_proj": lambda: block.mixer.in_proj(x, c),
        "  token mixing: decay_mix (chunked)": lambda: decay_mix(q, k, v, g, block.mixer.chunk_size)[0],
        "  token mixing, whole": lambda: block.mixer(x, c)[0],
        f"  MoE ({block.ffn.num_experts} experts, top-{block.ffn.top_k})": lambda: block.ffn(x)[0],
        "GPT block (all below, with norms)": lambda: gblock(x, None, None)[0],
        "  attention (qkv, causal SDPA, out)": lambda: gblock.attn(x, None, None)[0],
        "  MLP (4x, GELU)": lambda: gblock.mlp(x),
    }


if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.manual_seed(0)
    for d in [int(a) for a in sys.argv[1:]] or [64, 128]:
        batch = 16
        fns = parts(d, batch)
        times: dict[str, list[float]] = {name: [] for name in fns}
        for rnd in range(7):
            for name, fn in fns.items():
                ms = fwd_bwd_ms(fn)
                if rnd:  # the first round warms up
                    times[name].append(ms)
        print(f"\nembed_dim {d}, batch {batch} x 64 bytes, forward + backward, ms (median of 6 rounds x 5 reps)\n")
        print("| part | ms |")
        print("|---|---:|")
        for name, ts in times.items():
            print(f"| {name} | {statistics.median(ts):.2f} |")
