"""The table of experiments/tune/README.md's `small` / `gpt_small` section, from a queue_small_10min output dir.

Per setting: final val bits/byte (mean ± std over seeds), steps, and val bits/byte at the last evaluation every
job of that model reached (wall-clock budgets give each job a different step count; the learning rate does not
change the step time, so the equal-step column takes that noise out).
    python experiments/tune/small/table.py outputs/multirun/tune_small_10min
"""

import glob
import json
import re
import statistics as st
import sys


def _sd(values: list[float]) -> str:
    return f" ± {st.stdev(values):.3f}" if len(values) > 1 else ""


def main(root: str) -> None:
    for model, at in (("small", 1200), ("gpt_small", 800)):
        groups: dict[str, list[tuple[float, int, float]]] = {}
        for path in sorted(glob.glob(f"{root}/{model}/*/metrics.json")):
            run = path.rsplit("/", 1)[0]
            final = json.load(open(path))
            if final["status"] != "completed":
                continue
            evals = {e["step"]: e["val_bpb"] for e in map(json.loads, open(f"{run}/metrics.jsonl")) if "val_bpb" in e}
            setting = re.sub(r"_seed\d+$", "", run.rsplit("/", 1)[1])
            groups.setdefault(setting, []).append((final["val_bpb"], final["step"], evals[at]))
        print(f"\n`{model}`\n\n| lr, warm-up | seeds | final val bits/byte | steps | at step {at} |")
        print("|---|---:|---:|---:|---:|")
        for setting in sorted(groups, key=lambda k: (not k.endswith("warmup50"), float(k[2:].split("_")[0]))):
            rows = groups[setting]
            final, steps, at_step = ([r[i] for r in rows] for i in range(3))
            name = setting.removeprefix("lr").replace("_warmup", ", ")
            print(
                f"| {name} | {len(rows)} | {st.mean(final):.3f}{_sd(final)} | {st.mean(steps):.0f} "
                f"| {st.mean(at_step):.3f}{_sd(at_step)} |"
            )


if __name__ == "__main__":
    main(sys.argv[1])
