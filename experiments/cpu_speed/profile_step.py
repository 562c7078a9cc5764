"""Where a training step's time goes, by kernel: torch.profiler over steady steps, one thread, run alone.

    python experiments/cpu_speed/profile_step.py recipe_10min_amx_ctx256        # from the repo root
    python experiments/cpu_speed/profile_step.py recipe_10min_ctx128_gpt

Compiled steps show inductor's fused C++ kernels by name (``cpp.enable_kernel_profile``); the table is the top rows
by self CPU time over 20 steps.
"""

import sys

import torch
import torch._inductor.config
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, ".")
torch._inductor.config.cpp.enable_kernel_profile = True
from compile_step import one_thread_trainer  # noqa: E402 - this script's folder is on the path

exp, extra = sys.argv[1], sys.argv[2:]
tr = one_thread_trainer(exp, extra)
for _ in range(5):
    tr.train_step(1e-3)
with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(20):
        tr.train_step(1e-3)
print(exp, " ".join(extra))
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=70))
