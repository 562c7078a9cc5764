"""How fast can one byte be decoded on this CPU at all? The weights each byte must read, timed alone.

Decoding one byte at batch 1 multiplies one vector by every *active* weight matrix of the model (each
layer's conditioner, token-mixing projections and the two routed experts of its MoE, then the head): a
matrix-vector product per matrix, which reads every weight once and does 2 FLOPs per weight read. This
script times exactly those products, back to back, with nothing else (no norms, no mixing, no routing):
a floor under any exact fp32 decoding step built from torch's kernels. It also times the same products
with the weights stored transposed (``x @ Wᵀ``, another kernel path) and in bf16 (half the bytes; not
the same logits, shown for scale).

    python experiments/cpu_speed/gemv_floor.py [preset=small] [threads=2] [repeats=200]
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
import torch.nn.functional as F

from lfbyte.config import model_preset
from lfbyte.model import MixtureOfExperts, build_model


def active_matrices(model: torch.nn.Module) -> list[torch.Tensor]:
    """The weight matrices one decoded byte multiplies by (an MoE layer: ``top_k`` of its experts)."""
    mats = []
    for block in model.blocks:
        if block.conditioner is not None:
            mats.append(block.conditioner.proj.weight)
        mats += [block.mixer.in_proj.weight_down, block.mixer.out_proj.weight]
        if block.mixer.in_proj.gate is not None:
            mats += [block.mixer.in_proj.gate.weight, block.mixer.in_proj.up]
        ffn = block.ffn
        if isinstance(ffn, MixtureOfExperts):
            mats.append(ffn.router.weight)
            for e in range(ffn.top_k):
                mats += [ffn.w_in[e], ffn.w_out[e]]
        else:
            mats += [ffn.w_in.weight, ffn.w_out.weight]
    mats.append(model.head.weight)
    return [m.detach().contiguous() for m in mats]


def seconds_per_pass(fn: object, repeats: int) -> float:
    for _ in range(20):
        fn()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(repeats // 5):
            fn()
        times.append((time.perf_counter() - t) / (repeats // 5))
    return statistics.median(times)


def main() -> None:
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    preset, threads, repeats = args.get("preset", "small"), int(args.get("threads", 2)), int(args.get("repeats", 200))
    torch.set_num_threads(threads)
    model = build_model({**model_preset(preset), "seq_len": 1024}).eval()
    mats = active_matrices(model)
    n = sum(m.numel() for m in mats)
    xs = [torch.randn(1, m.shape[1]) for m in mats]
    ways = {
        "fp32, F.linear (what the model runs)": (mats, xs, lambda w, x: F.linear(x, w)),
        "fp32, x @ Wᵀ stored transposed": ([m.t().contiguous() for m in mats], xs, lambda w, x: x @ w),
        "bf16, F.linear (half the bytes; other logits)": ([m.bfloat16() for m in mats], [x.bfloat16() for x in xs],
                                                           lambda w, x: F.linear(x, w)),
    }
    print(f"model={preset}: {len(mats)} active matrices, {n / 1e6:.2f}M weights per decoded byte; "
          f"{threads} torch threads, torch {torch.__version__}, median of 5 × {repeats // 5} passes\n")
    print("| weights | ms per byte | bytes/s ceiling | GB/s read |")
    print("|---|---:|---:|---:|")
    with torch.inference_mode():
        for name, (ws, inputs, op) in ways.items():
            def one_pass(ws=ws, inputs=inputs, op=op) -> None:
                for w, x in zip(ws, inputs, strict=True):
                    op(w, x)
            sec = seconds_per_pass(one_pass, repeats)
            size = sum(w.numel() * w.element_size() for w in ws)
            print(f"| {name} | {sec * 1e3:.3f} | {1 / sec:,.0f} | {size / sec / 1e9:.1f} |")


if __name__ == "__main__":
    main()
