"""``python -m lfbyte``: the commands, one line each; ``--version``."""

from __future__ import annotations

import sys

from . import __version__

COMMANDS = {
    "train": "train a model: python -m lfbyte.train model=small data=text (Hydra overrides; -m for sweeps)",
    "generate": "sample from a run: python -m lfbyte.generate run_dir=outputs/runs/<ts> prompt='Once'",
    "app": "the Gradio bench: two runs side by side, their curves: python -m lfbyte.app run_dir=outputs/runs/<ts>",
    "compress": "a run's model as a lossless compressor: python -m lfbyte.compress run_dir=<run> input=<file>",
    "export": "a checkpoint (sharded or not) as one weights-only .pth: python -m lfbyte.export run_dir=<run>",
    "report": "one table and plot for a sweep: python -m lfbyte.report outputs/multirun/<ts>",
    "bench": "speed and quality of each model on this machine: python -m lfbyte.bench",
    "bench.train": "training throughput, fp32 vs bf16, 1 vs N processes: python -m lfbyte.bench.train",
    "bench.decode": "decoding speed, cached vs uncached: python -m lfbyte.bench.decode",
    "bench.memory": "bytes per rank under DDP vs FSDP, and the largest model per GPU: python -m lfbyte.bench.memory",
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args in (["--version"], ["-V"]):
        print(f"lfbyte {__version__}")
        return 0
    if args and args[0] not in ("-h", "--help"):
        print(f"error: python -m lfbyte takes no command; run python -m lfbyte.<command> (one of: "
              f"{', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    print(f"lfbyte {__version__}: byte-level language models and their experiments. Commands:")
    width = max(map(len, COMMANDS))
    for name, what in COMMANDS.items():
        print(f"  python -m lfbyte.{name:<{width}}  {what}")
    print("Configs: the package's conf/; add your own with hydra.searchpath=[file://conf] (README: Use lfbyte in "
          "your own project).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
