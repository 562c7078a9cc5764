#!/usr/bin/env bash
# Issue 11's GPU measurements in one go (~9 minutes on one H100/H200; the device tool lends 15 minutes in all).
# Raw logs go to $OUT; commit them beside this script. Nothing here has run yet: no GPU was lent when it was
# written (see README.md).
#   where the package registry is reachable:   bash experiments/gpu_kernels/run.sh prepare   # wheels -> .gpu/wheels
#   on the GPU machine (CUDA torch installed):  OUT=<dir> bash experiments/gpu_speed/run.sh
#
#  1. correctness on the GPU: fla's fused kernels vs decay_mix (tests/test_kernels.py), a training step under
#     CUDA's sync detector and the CUDA-graph decoding step (tests/test_sync_free.py)
#  2. model=base vs gpt_base, bf16, trainer.compile=true, seq_len 2048: bytes/s and MFU against the bf16 matmul
#     peak measured in the same run (python -m lfbyte.bench, sections peak + throughput)
#  3. cost per byte and peak memory as seq_len grows 512 ... 8192, both architectures (eager, same bytes/step)
#  4. decoding bytes/s at 64 and 512 bytes of context: uncached, cached, cached + CUDA graph (bench.decode)
set -uo pipefail
cd "$(dirname "$0")/../.."
: "${OUT:?set OUT to a folder for the logs}"
export PYTHONUNBUFFERED=1 LFBYTE_CACHE=/tmp/lfcache PYTHONPATH=$PWD WANDB_MODE=disabled
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/env.txt"
if [ -d .gpu/wheels ]; then  # offline: the device's CUDA torch (and its triton) stay; each wheel on its own
  for w in .gpu/wheels/*.whl; do python3 -m pip install -q --no-deps "$w" 2>&1 | tail -1; done
else
  python3 -m pip install -q -e ".[gpu,dev]" 2>&1 | tail -2
fi
python3 -c "import torch, triton, fla; print('torch', torch.__version__, 'triton', triton.__version__, 'fla-core', \
fla.__version__)" 2>&1 | tee -a "$OUT/env.txt"

echo "=== 1. GPU tests"
timeout 240 python3 -m pytest -q -p no:cacheprovider -rs tests/test_kernels.py tests/test_sync_free.py -k "cuda or fused" \
  > "$OUT/tests.log" 2>&1; echo "exit $?"; tail -n 8 "$OUT/tests.log"

echo "=== 2. base vs gpt_base, bf16, compiled, seq_len 2048"
timeout 200 python3 -m lfbyte.bench 'bench.sections=[peak,throughput]' trainer.device=cuda trainer.compile=true \
  'bench.peak.precisions=[bf16]' 'bench.peak.sizes=[4096,8192]' 'bench.throughput.models=[base,gpt_base]' \
  'bench.throughput.precisions=[bf16]' bench.throughput.seq_len=2048 bench.throughput.batch_size=16 \
  bench.throughput.steps=10 bench.throughput.warmup=5 hydra.run.dir=/tmp/bench_mfu > "$OUT/mfu.log" 2>&1
echo "exit $?"; cp /tmp/bench_mfu/bench.md "$OUT/mfu.md" 2>/dev/null; cat "$OUT/mfu.md" 2>/dev/null

echo "=== 3. seq_len sweep 512 ... 8192"
timeout 150 python3 -m lfbyte.bench 'bench.sections=[scaling]' trainer.device=cuda \
  'bench.scaling.models=[base,gpt_base]' 'bench.scaling.seq_lens=[512,1024,2048,4096,8192]' \
  bench.scaling.reference_seq_len=512 bench.scaling.bytes_per_step=65536 bench.scaling.precision=bf16 \
  bench.scaling.steps=5 bench.scaling.warmup=2 hydra.run.dir=/tmp/bench_scaling > "$OUT/scaling.log" 2>&1
echo "exit $?"; cp /tmp/bench_scaling/bench.md "$OUT/scaling.md" 2>/dev/null; cat "$OUT/scaling.md" 2>/dev/null

echo "=== 4. decoding"
timeout 120 python3 -m lfbyte.bench.decode device=cuda preset=base 'contexts=[64,512]' compile=true repeats=3 \
  > "$OUT/decode.log" 2>&1; echo "exit $?"; cat "$OUT/decode.log"
