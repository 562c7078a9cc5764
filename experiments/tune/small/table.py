"""The table of experiments/tune/README.md's `small` / `gpt_small` section, from a queue_small_10min output dir.

Per setting: final val bits/byte (mean ± std over seeds), steps, and val bits/byte at the last evaluation every
job of that model reached (lfbyte.report's equal-step column: wall-clock budgets give each job a different step
count, and the learning rate does not change the step time). Jobs are read, grouped by seed and put at equal
steps by lfbyte.report; this script only lays them out as the README's table.
    python experiments/tune/small/table.py outputs/multirun/tune_small_10min
"""

import sys
from pathlib import Path

from lfbyte.report import equal_steps, find_jobs, group_by_seed, swept_keys
from lfbyte.stats import summarize


def _cell(values: list[float]) -> str:
    s = summarize(values)
    return f"{s.mean:.3f} ± {s.std:.3f}" if s.n > 1 else f"{s.mean:.3f}"


def main(root: str) -> None:
    for model in ("small", "gpt_small"):
        jobs = [j for j in find_jobs(Path(root) / model) if j.ok and j.curve]
        if not jobs:
            sys.exit(f"error: no finished {model} job under {root}/{model}; run the queue first (see the docstring)")
        groups = group_by_seed(jobs, swept_keys(jobs)[0])
        groups.sort(key=lambda g: (g.settings["optimizer.warmup_steps"] != "50", float(g.settings["optimizer.lr"])))
        at = equal_steps(groups, None).get("")
        if at is None:
            sys.exit(f"error: the {model} jobs under {root}/{model} share no evaluation step (or all ended at one step)")
        print(f"\n`{model}`\n\n| lr, warm-up | seeds | final val bits/byte | steps | at step {at} |")
        print("|---|---:|---:|---:|---:|")
        for g in groups:
            lr, warmup = g.settings["optimizer.lr"], g.settings["optimizer.warmup_steps"]
            print(f"| {lr}, {warmup} | {len(g.values)} | {_cell(g.values)} | {g.mean_of('step'):.0f} "
                  f"| {_cell(g.at_step(at))} |")


if __name__ == "__main__":
    main(sys.argv[1])
