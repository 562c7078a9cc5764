"""delta_mix's chunk system solved by torch.linalg.solve_triangular (lfbyte's up to 8881e80, written out here)
against lfbyte's delta_mix, which inverts (I + A) by block doubling (_unit_lower_inverse), beside decay_mix: forward +
backward of one layer's shapes of the 10-minute recipe, bf16 autocast, compiled, one thread, interleaved rounds in
one process. Run alone.

    python experiments/cpu_speed/delta_inverse_bench.py          # from the repo root
"""

import sys
import time

import torch
import torch.nn.functional as F
from einops import rearrange

sys.path.insert(0, ".")
from lfbyte.model.token_mixing import _decay_matrix, decay_mix, delta_mix  # noqa: E402


def delta_mix_solve(q, k, v, log_decay, beta, c):  # 8881e80's delta_mix for training: no carried state, t = n·c
    work = torch.promote_types(v.dtype, torch.float32)
    q, k, v, beta, log_decay = (x.to(work) for x in (q, k, v, beta, log_decay))
    dk = q.shape[-1]
    q, k, v = (rearrange(x, "b h (n c) d -> b h n c d", c=c) for x in (q, k, v))
    cum = rearrange(log_decay, "b h (n c) -> b h n c", c=c).cumsum(-1)
    beta = rearrange(beta, "b h (n c) -> b h n c", c=c)[..., None]
    decay = _decay_matrix(cum)
    strict = torch.ones(c, c, dtype=torch.bool).tril(-1)
    a = (beta * (k @ k.transpose(-1, -2)) * decay).masked_fill(~strict, 0)
    rhs = beta * torch.cat([v, k * cum.exp()[..., None]], -1)
    w_v, w_k = torch.linalg.solve_triangular(a, rhs, upper=False, unitriangular=True).split([v.shape[-1], dk], -1)
    scores = (q @ k.transpose(-1, -2)) * decay
    k_to_end = (k * (cum[..., -1:] - cum).exp()[..., None]).transpose(-1, -2)
    trans = cum[..., -1, None, None].exp() * torch.eye(dk, dtype=work) - k_to_end @ w_k
    inject = k_to_end @ w_v
    s, entering = None, []
    for i in range(cum.shape[2]):
        entering.append(s if s is not None else torch.zeros_like(inject[:, :, 0]))
        s = inject[:, :, i] if s is None else trans[:, :, i] @ s + inject[:, :, i]
    s_in = torch.stack(entering, 2)
    out = (q * cum.exp()[..., None]) @ s_in + scores @ (w_v - w_k @ s_in)
    return rearrange(out, "b h n c e -> b h (n c) e"), s


if __name__ == "__main__":
    torch.manual_seed(0)
    torch.set_num_threads(1)
    b, h, t, d, c = 4, 2, 256, 48, 32
    f64 = [torch.randn(b, h, t, d, dtype=torch.float64) for _ in range(2)] + [
        F.normalize(torch.randn(b, h, t, d, dtype=torch.float64), dim=-1),
        -F.softplus(torch.randn(b, h, t, dtype=torch.float64)), torch.rand(b, h, t, dtype=torch.float64)]
    q64, v64, k64, ld64, be64 = f64
    ref, inv = delta_mix_solve(q64, k64, v64, ld64, be64, c)[0], delta_mix(q64, k64, v64, ld64, be64, c)[0]
    print(f"same outputs in float64: max |block inverse - solve| = {(ref - inv).abs().max().item():.1e}")
    xs = [x.to(torch.bfloat16).requires_grad_() for x in (q64, k64, v64, ld64, be64)]
    fns = {"delta_mix, solve_triangular (8881e80)": lambda *x: delta_mix_solve(*x, c),
           "delta_mix, block inverse (lfbyte's)": lambda *x: delta_mix(*x, c),
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
