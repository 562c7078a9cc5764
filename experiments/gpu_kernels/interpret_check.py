"""fla's real fused-recurrent Triton kernel, run by Triton's interpreter on CPU, against decay_mix.

    TRITON_INTERPRET=1 python experiments/gpu_kernels/interpret_check.py   # needs fla-core and triton

The kernel runs through lfbyte.model.kernels.to_fla/from_fla, the conversion the CUDA dispatch uses, so
agreement in the forward output, final state and every gradient (q, k, v, log-decay, initial state) pins
the layout, scale and gate conventions on the compiled kernel's own source, not only on fla's naive
references (tests/test_kernels.py). fla's chunk kernel does not run under the interpreter (chunk_h.py
calls ``.to`` on a loop index); it is checked on a GPU (experiments/gpu_kernels/run.sh).
"""

import os
import warnings

import torch
import torch.nn.functional as F
import triton.runtime.autotuner as autotuner

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
warnings.simplefilter("ignore")  # fla warns that Triton has no GPU backend here
# No driver to time autotune candidates on: report 1 ms for each, so the first config is used.
autotuner.Autotuner.do_bench = property(lambda self: lambda fn, quantiles=None: [1.0] * 3 if quantiles else 1.0)

from fla.ops.simple_gla import fused_recurrent_simple_gla  # noqa: E402

from lfbyte.model import decay_mix  # noqa: E402
from lfbyte.model.kernels import from_fla, to_fla  # noqa: E402

torch.manual_seed(0)
worst = 0.0
for t in (1, 37):
    b, h, dk, dv = 2, 3, 16, 8
    inputs = (torch.randn(b, h, t, dk), torch.randn(b, h, t, dk) * dk**-0.5, torch.randn(b, h, t, dv),
              -F.softplus(torch.randn(b, h, t) + 1), torch.randn(b, h, dk, dv))
    results = []
    for run in ("decay_mix", "fla"):
        leaves = [x.clone().requires_grad_() for x in inputs]
        if run == "fla":
            out, state = from_fla(*fused_recurrent_simple_gla(**to_fla(*leaves)))
        else:
            out, state = decay_mix(*leaves[:4], 16, leaves[4])
        (out.sum() + state.square().sum()).backward()
        results.append([out, state] + [x.grad for x in leaves])
    diffs = [(a - r).abs().max().item() for a, r in zip(results[1], results[0], strict=True)]
    worst = max(worst, *diffs)
    print(f"t={t}: max |fla - decay_mix| o {diffs[0]:.2e} state {diffs[1]:.2e} dq {diffs[2]:.2e} dk {diffs[3]:.2e} "
          f"dv {diffs[4]:.2e} dg {diffs[5]:.2e} dstate0 {diffs[6]:.2e}")
assert worst < 1e-4, worst
print("fused_recurrent_simple_gla (interpreted) matches decay_mix")
