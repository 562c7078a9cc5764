"""delta_mix with its chunk's system solved by torch.linalg.solve_triangular (lfbyte's) against a block-doubling
inverse (the variant tried on 2026-12-04 and not kept), beside decay_mix: forward + backward of one layer's shapes of
the 10-minute recipe, bf16 autocast, compiled, one thread, interleaved rounds in one process. Run alone.

    python experiments/cpu_speed/delta_inverse_bench.py          # from the repo root
"""

import sys
import time

import torch
import torch.nn.functional as F
from einops import rearrange

sys.path.insert(0, ".")
from lfbyte.model.token_mixing import _decay_matrix, decay_mix, delta_mix  # noqa: E402


def unit_lower_inverse(a: torch.Tensor) -> torch.Tensor:
    """(I + A)^-1 for strictly lower-triangular A: diagonal blocks doubled, T21 = -T2 A21 T1, in fp32."""
    c = a.shape[-1]
    p = 1 << (c - 1).bit_length()
    a = F.pad(a, (0, p - c, 0, p - c))
    lead = a.shape[:-2]
    with torch.autocast("cpu", enabled=False):
        t, s = torch.ones(*lead, p, 1, 1, dtype=a.dtype), 1
        while s < p:
            n = p // (2 * s)
            blocks = a.reshape(*lead, n, 2 * s, n, 2 * s).transpose(-3, -2).reshape(*lead, n * n, 2 * s, 2 * s)
            t1, t2 = t.reshape(*lead, n, 2, s, s).unbind(-3)
            t21 = -(t2 @ blocks[..., :: n + 1, s:, :s] @ t1)
            t = torch.cat([torch.cat([t1, torch.zeros_like(t1)], -1), torch.cat([t21, t2], -1)], -2)
            s *= 2
    return t.reshape(*lead, p, p)[..., :c, :c]


def delta_mix_inverse(q, k, v, log_decay, beta, c):  # training only: no carried state, t a multiple of c
    work = torch.float32
    q, k, v, beta, log_decay = (x.to(work) for x in (q, k, v, beta, log_decay))
    dk = q.shape[-1]
    q, k, v = (rearrange(x, "b h (n c) d -> b h n c d", c=c) for x in (q, k, v))
    cum = rearrange(log_decay, "b h (n c) -> b h n c", c=c).cumsum(-1)
    beta = rearrange(beta, "b h (n c) -> b h n c", c=c)[..., None]
    decay = _decay_matrix(cum)
    strict = torch.ones(c, c, dtype=torch.bool).tril(-1)
    a = (beta * (k @ k.transpose(-1, -2)).to(work) * decay).masked_fill(~strict, 0)
    w = unit_lower_inverse(a) @ (beta * torch.cat([v, k * cum.exp()[..., None]], -1))
    k_to_end = (k * (cum[..., -1:] - cum).exp()[..., None]).transpose(-1, -2)
    inject, to_trans = (k_to_end @ w).to(work).split([v.shape[-1], dk], -1)
    trans = cum[..., -1, None, None].exp() * torch.eye(dk) - to_trans
    s, entering = None, []
    for i in range(cum.shape[2]):
        entering.append(s if s is not None else torch.zeros_like(inject[:, :, 0]))
        s = inject[:, :, i] if s is None else trans[:, :, i] @ s + inject[:, :, i]
    s_in = torch.stack(entering, 2)
    sw_v, sw_k = (((q @ k.transpose(-1, -2)).to(work) * decay) @ w).to(work).split([v.shape[-1], dk], -1)
    out = (q * cum.exp()[..., None] - sw_k) @ s_in + sw_v
    return rearrange(out, "b h n c e -> b h (n c) e"), s


if __name__ == "__main__":
    torch.manual_seed(0)
    torch.set_num_threads(1)
    b, h, t, d, c = 4, 2, 256, 48, 32
    f64 = [torch.randn(b, h, t, d, dtype=torch.float64) for _ in range(2)] + [
        F.normalize(torch.randn(b, h, t, d, dtype=torch.float64), dim=-1),
        -F.softplus(torch.randn(b, h, t, dtype=torch.float64)), torch.rand(b, h, t, dtype=torch.float64)]
    q64, v64, k64, ld64, be64 = f64
    ref, inv = delta_mix(q64, k64, v64, ld64, be64, c)[0], delta_mix_inverse(q64, k64, v64, ld64, be64, c)[0]
    print(f"same outputs: max |block inverse (fp32) - solve (float64)| = {(ref - inv.to(ref.dtype)).abs().max().item():.1e}")
    xs = [x.to(torch.bfloat16).requires_grad_() for x in (q64, k64, v64, ld64, be64)]
    fns = {"delta_mix, solve_triangular": lambda *x: delta_mix(*x, c),
           "delta_mix, block inverse": lambda *x: delta_mix_inverse(*x, c),
           "decay_mix": lambda q, k, v, ld, be: decay_mix(q, k, v, ld, c)}
    steps = {}
    for name, fn in fns.items():
        compiled = torch.compile(fn)

        def step(f=compiled) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                o, s = f(*xs)
            (o.float().sum() + s.float().sum()).backward()

        for _ in range(3):
            step()
        steps[name] = step
    times = {name: [] for name in steps}
    for _ in range(4):
        for name, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(100):
                step()
            times[name].append((time.perf_counter() - t0) * 10)
    print("| ms per call, fwd+bwd, 4 interleaved rounds of 100 | " + " | ".join(f"round {i + 1}" for i in range(4)) + " |")
    print("|---|" + "---:|" * 4)
    for name, ms in times.items():
        print(f"| {name} | " + " | ".join(f"{x:.2f}" for x in ms) + " |")
