"""trainer.compile on the CPU: the first steps (compilation) and the steady step time, one thread, run alone.

    python experiments/cpu_speed/compile_step.py recipe_2min_mini trainer.compile=true     # from the repo root
    python experiments/cpu_speed/compile_step.py recipe_2min_mini_gpt [trainer.compile=true]
"""

import sys
import tempfile
import time

import torch

sys.path.insert(0, ".")
from lfbyte.config import to_plain, validate  # noqa: E402 - after the repo root joins the path
from lfbyte.trainer import Trainer  # noqa: E402
from tests.conftest import compose_cfg  # noqa: E402


def one_thread_trainer(exp: str, extra: list[str]) -> Trainer:
    """A Trainer for ``experiment=<exp>`` plus overrides, on one thread, without sampling or a progress bar."""
    torch.set_num_threads(1)
    cfg = to_plain(compose_cfg(f"experiment={exp}", "trainer.num_threads=1", "trainer.sample_length=0",
                               "trainer.progress=false", *extra))
    validate(cfg)
    return Trainer(cfg, tempfile.mkdtemp())


if __name__ == "__main__":
    exp, extra = sys.argv[1], sys.argv[2:]
    tr = one_thread_trainer(exp, extra)
    t = time.perf_counter()
    for _ in range(3):
        tr.train_step(1e-3)
    print(exp, extra, "first 3 steps s", round(time.perf_counter() - t, 1))
    t = time.perf_counter()
    for _ in range(20):
        tr.train_step(1e-3)
    print(exp, extra, "ms/step", round((time.perf_counter() - t) / 20 * 1e3, 1))
