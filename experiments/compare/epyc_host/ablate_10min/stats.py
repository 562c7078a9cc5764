"""The ablate_10min statistics: LF with and without the adaptive part, each beside a GPT of its seed.

Run from the repository root after ``bash experiments/run_queue.sh experiments/compare/queue_epyc_ablate_10min.txt``.
"""

import json
from pathlib import Path

from lfbyte.stats import summarize, welch

SWEEP = Path("outputs/multirun/epyc_ablate_10min")


def finals(setting: str) -> list[float]:
    return [json.loads(f.read_text())["val_bpb"] for f in sorted((SWEEP / setting).glob("seed*/metrics.json"))]


na, full = finals("lf256_lin0_no_adaptive"), finals("lf256_lin0")
beside_na, beside_full = finals("gpt128_lin0"), finals("gpt128_lin0_again")
gpt = beside_na + beside_full
for name, values in (("LF no_adaptive", na), ("LF", full), ("GPT beside no_adaptive", beside_na),
                     ("GPT beside LF", beside_full), ("GPT, every run", gpt)):
    print(f"{name}: {summarize(values)}")
print(f"no_adaptive - LF, per seed: {[round(a - b, 4) for a, b in zip(na, full, strict=True)]}; {welch(na, full)}")
print(f"LF / GPT beside, per seed: no_adaptive {[round(a / b, 4) for a, b in zip(na, beside_na, strict=True)]}, "
      f"LF {[round(a / b, 4) for a, b in zip(full, beside_full, strict=True)]}")
mean = sum(gpt) / len(gpt)
print(f"mean / mean of every GPT run: no_adaptive {sum(na) / len(na) / mean:.4f}, LF {sum(full) / len(full) / mean:.4f}")
print(f"no_adaptive vs the GPTs: {welch(na, gpt)}; LF vs the GPTs: {welch(full, gpt)}")
