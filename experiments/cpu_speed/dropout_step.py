"""The training step with dropout: nn.Dropout's mask (``nn``) against lfbyte's (``lfbyte``), one thread, run alone.

    python experiments/cpu_speed/dropout_step.py lfbyte recipe_10min_amx_ctx128 model.dropout=0.1   # from the root
    python experiments/cpu_speed/dropout_step.py nn recipe_10min_ctx128_gpt model.dropout=0.1

Prints the first 3 steps' seconds (compilation, when compiled) and the best of three 20-step means in ms per step.
"""

import sys
import time

import torch.nn.functional as F

sys.path.insert(0, ".")
from compile_step import one_thread_trainer  # noqa: E402 - this folder (the script's) is on the path

import lfbyte.model.dropout  # noqa: E402 - after the repo root joins the path

mask, exp, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
if mask == "nn":  # what the models used before lfbyte/model/dropout.py: one float per element
    lfbyte.model.dropout.dropout = lambda x, p, training=True: F.dropout(x, p, training)
tr = one_thread_trainer(exp, extra)
t = time.perf_counter()
for _ in range(3):
    tr.train_step(1e-3)
first = time.perf_counter() - t
means = []
for _ in range(3):
    t = time.perf_counter()
    for _ in range(20):
        tr.train_step(1e-3)
    means.append((time.perf_counter() - t) / 20 * 1e3)
print(f"{mask:6s} {exp} {' '.join(extra)}: first 3 steps {first:.1f} s, ms/step {min(means):.1f} "
      f"(20-step means {', '.join(f'{m:.1f}' for m in means)})", flush=True)
