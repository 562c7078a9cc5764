"""``python -m lfbyte.bench``: the benchmark suite (see :mod:`lfbyte.bench.suite`)."""

from .suite import main

main()
