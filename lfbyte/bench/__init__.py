"""Benchmarks: speed and quality measured side by side in one run, printed as Markdown tables.

- ``python -m lfbyte.bench``: the suite (:mod:`.suite`): matmul peak, training throughput and MFU,
  sequence-length scaling, quality at equal wall-clock time; ``conf/bench.yaml``.
- ``python -m lfbyte.bench.train``: training throughput, fp32 vs bf16, 1 vs N DDP processes (:mod:`.train`).
- ``python -m lfbyte.bench.decode``: decoding speed, cached vs uncached (:mod:`.decode`).

Each takes Hydra ``key=value`` overrides of its ``conf/<name>.yaml``; a bad one is one ``error:`` line.
Run benchmarks alone on the machine: a busy neighbour distorts every number.
"""
