"""Token-mixing speed on CUDA: fused fla kernels (mixer_kernel=auto) vs pure-torch decay_mix (torch).

    python experiments/gpu_kernels/speed.py        # from the repo root, on a GPU with fla-core

(1) one TokenMixing layer at model=base's shape, forward + backward under bf16 autocast; (2) cached
one-byte decoding of model=base (random weights) after a 512-byte prefill, as lfbyte.bench.decode times it.
"""

import logging
import statistics

import torch

from lfbyte.bench.common import median_seconds
from lfbyte.bench.decode import bytes_per_second
from lfbyte.config import model_preset
from lfbyte.model import TokenMixing, build_model

logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")  # the kernel choice, once per kernel
device = torch.device("cuda")
base = model_preset("base")
d, h, t, b = base["embed_dim"], base["num_heads"], base["seq_len"], 32

print(f"| mixer_kernel | layer fwd+bwd, b={b} t={t} (ms) | cached decoding (bytes/s) |")
print("|---|---:|---:|")
for kernel in ("torch", "auto"):
    torch.manual_seed(0)
    layer = TokenMixing(d, h, base["adapt_dim"], base["adapt_rank"], t, base["chunk_size"], True, kernel).to(device)
    x = torch.randn(b, t, d, device=device, requires_grad=True)
    c = torch.randn(b, t, base["adapt_dim"], device=device)

    def step(layer: TokenMixing = layer, x: torch.Tensor = x, c: torch.Tensor = c) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out, _ = layer(x, c)
        out.float().square().mean().backward()

    ms = 1e3 * median_seconds(step, steps=20, warmup=5, device=device)
    model = build_model({**base, "mixer_kernel": kernel, "dropout": 0.0}).to(device).eval()
    context = torch.randint(0, 256, (512,)).tolist()
    bytes_per_second(model, context[:8], 4, use_cache=True)  # warm-up (Triton compiles here)
    bps = statistics.median(bytes_per_second(model, context, 64, use_cache=True) for _ in range(3))
    print(f"| {kernel} | {ms:.2f} | {bps:,.0f} |", flush=True)
