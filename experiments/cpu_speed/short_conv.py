"""What TokenMixing's short convolution and the one-chunk decay_mix cost per training step on a CPU core: dense
`tiny` (the 2-minute recipe's model), fp32, 1 thread, batch 16 x 64 bytes, AdamW step included; the variants
alternate inside each round, median of rounds.

    python experiments/cpu_speed/short_conv.py [rounds]      # run it alone on the machine
"""

import statistics
import sys
import time

import torch

from lfbyte.model import LFByteTransformer

TINY = dict(seq_len=64, embed_dim=64, num_layers=2, num_heads=2, adapt_dim=16, adapt_rank=8, num_experts=1)
VARIANTS = {
    "no short conv, chunk 16": dict(chunk_size=16),
    "no short conv, chunk 64 (one chunk)": dict(chunk_size=64),
    "short_conv 4 (k, v), chunk 16": dict(chunk_size=16, short_conv=4),
    "short_conv 4 (k, v), chunk 64 (one chunk)": dict(chunk_size=64, short_conv=4),
}

if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 12
    x = torch.randint(0, 256, (16, 65))
    models = {name: LFByteTransformer(**TINY, **kw) for name, kw in VARIANTS.items()}
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-3) for name, m in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    for rnd in range(rounds + 1):
        for name, model in models.items():
            start = time.perf_counter()
            for _ in range(10):
                model(x[:, :-1], x[:, 1:]).loss.backward()
                opts[name].step()
                opts[name].zero_grad(set_to_none=True)
            if rnd:  # round 0 warms up
                times[name].append((time.perf_counter() - start) * 100)
    base = statistics.median(times[next(iter(times))])
    print(f"\ndense tiny, batch 16 x 64, fwd + bwd + AdamW, ms per step (median of {rounds} rounds x 10 steps)\n")
    print("| variant | ms / step | vs first |")
    print("|---|---:|---:|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.2f} | {statistics.median(ts) / base:.2f}x |")
