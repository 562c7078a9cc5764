"""The table of experiments/tune/README.md's `small` / `gpt_small` section, from a queue_small_10min output dir.

Per setting: final val bits/byte (mean ± std over seeds), steps, and val bits/byte at the last evaluation every
job of that model reached (wall-clock budgets give each job a different step count; the learning rate does not
change the step time, so the equal-step column takes that noise out). Jobs are read and grouped by seed with
lfbyte.report's own readers; only the equal-step column is new here.
    python experiments/tune/small/table.py outputs/multirun/tune_small_10min
"""

import sys
from pathlib import Path

from lfbyte.report import find_jobs, group_by_seed, swept_keys
from lfbyte.stats import summarize


def _cell(values: list[float]) -> str:
    s = summarize(values)
    return f"{s.mean:.3f} ± {s.std:.3f}" if s.n > 1 else f"{s.mean:.3f}"


def main(root: str) -> None:
    for model in ("small", "gpt_small"):
        jobs = [j for j in find_jobs(Path(root) / model) if j.ok and j.curve]
        if not jobs:
            sys.exit(f"error: no finished {model} job under {root}/{model}; run the queue first (see the docstring)")
        curves = {id(j): {r["step"]: r["val_bpb"] for r in j.curve} for j in jobs}
        at = max(set.intersection(*(set(c) for c in curves.values())))  # the last evaluation every job reached
        groups = group_by_seed(jobs, swept_keys(jobs)[0])
        groups.sort(key=lambda g: (g.settings["optimizer.warmup_steps"] != "50", float(g.settings["optimizer.lr"])))
        print(f"\n`{model}`\n\n| lr, warm-up | seeds | final val bits/byte | steps | at step {at} |")
        print("|---|---:|---:|---:|---:|")
        for g in groups:
            lr, warmup = g.settings["optimizer.lr"], g.settings["optimizer.warmup_steps"]
            at_step = [curves[id(j)][at] for j in g.finished]
            print(
                f"| {lr}, {warmup} | {len(g.values)} | {_cell(g.values)} | {g.mean_of('step'):.0f} | {_cell(at_step)} |"
            )


if __name__ == "__main__":
    main(sys.argv[1])
