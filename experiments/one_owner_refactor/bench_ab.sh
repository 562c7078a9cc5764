#!/bin/bash
# before/after timing of python -m lfbyte.bench's throughput section, interleaved: B A B A B A
set -u
OUT=${1:-/tmp/bench_ab}
mkdir -p $OUT
ARGS="bench.sections=[peak,throughput] bench.throughput.models=[tiny,gpt_tiny,mini] bench.throughput.precisions=[fp32,bf16] bench.throughput.steps=8 bench.throughput.warmup=2 bench.peak.sizes=[512,1024] trainer.num_threads=2"
for i in 1 2 3; do
  for side in before after; do
    dir=/tmp/before; [ $side = after ] && dir=/work/main
    (cd $dir && OMP_NUM_THREADS=2 /work/main/.venv/bin/python -c "import sys; sys.path.insert(0, '.'); sys.argv=['bench', *sys.argv[1:]]; import runpy; runpy.run_module('lfbyte.bench', run_name='__main__')" $ARGS hydra.run.dir=$OUT/$side-$i > $OUT/$side-$i.md 2> $OUT/$side-$i.err)
    echo "$side $i rc=$?"
  done
done
