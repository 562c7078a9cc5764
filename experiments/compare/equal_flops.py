"""Equal training FLOPs: the side that spent more FLOPs, read off its curves at the other side's final FLOPs
(linear interpolation between evaluations, per seed; mean ± std over seeds), next to the other's final value.

    python experiments/compare/equal_flops.py outputs/multirun/shapes_2min/tiny outputs/multirun/shapes_2min/gpt_tiny
"""
import json
import statistics
import sys
from itertools import pairwise
from pathlib import Path

LN2 = 0.6931471805599453


def finished(sweep: str) -> list[Path]:
    return [r for r in sorted(Path(sweep).glob("*/")) if (r / "metrics.json").exists()]


def curve(run: Path) -> list[tuple[float, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r["train_flops"], r["val_bpb"]) for r in rows if "val_bpb" in r and "train_flops" in r]


def at(points: list[tuple[float, float]], x: float) -> float:
    """The curve at x; a seed that ended just short of x (seeds differ in steps) gives its last value."""
    if x > points[-1][0]:
        return points[-1][1]
    for (x0, y0), (x1, y1) in pairwise(points):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    raise ValueError(f"{x:.3g} FLOPs is before the curve's first evaluation ({points[0][0]:.3g})")


def summary(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f} (n={len(values)})"


def main(lf_dir: str, gpt_dir: str) -> None:
    sides = {"LFByteTransformer": finished(lf_dir), "GPT": finished(gpt_dir)}
    final = {k: [json.loads((r / "metrics.json").read_text())["val_loss"] / LN2 for r in runs]
             for k, runs in sides.items()}
    flops = {k: statistics.mean(curve(r)[-1][0] for r in runs) for k, runs in sides.items()}
    short, long = sorted(sides, key=flops.get)
    read = [at(curve(r), flops[short]) for r in sides[long]]
    lf, gpt = (statistics.mean(final["LFByteTransformer"] if short == "LFByteTransformer" else read),
               statistics.mean(final["GPT"] if short == "GPT" else read))
    print(f"{short} final: {summary(final[short])} at {flops[short] / 1e12:.2f} TFLOP")
    print(f"{long} at that FLOP count: {summary(read)} (its own final {summary(final[long])} at "
          f"{flops[long] / 1e12:.2f} TFLOP)")
    print(f"LFByteTransformer / GPT at equal FLOPs: {lf / gpt:.3f}x")


if __name__ == "__main__":
    main(*sys.argv[1:3])
