#!/usr/bin/env bash
# One short GPU check of the fused token mixer (issue 11): fla-core's kernels against the pure-torch decay_mix
# (tests/test_kernels.py), then speed with each kernel: one layer, cached decoding, and a short model=base run.
# About 6 minutes on one H100/H200, most of it Triton compiling and the two training runs.
#   where the package registry is reachable:     bash experiments/gpu_kernels/run.sh prepare   # wheels -> .gpu/wheels
#   on the GPU machine (CUDA torch installed):   OUT=<dir> bash experiments/gpu_kernels/run.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
WHEELS=.gpu/wheels
if [ "${1:-}" = prepare ]; then  # pure-python wheels: .[gpu,dev]'s needs for these checks, CUDA torch aside
  python3 -m pip wheel -q --no-deps -w $WHEELS fla-core==0.6.0 hydra-core==1.3.2 omegaconf==2.3.0 \
    antlr4-python3-runtime==4.9.3 einops tqdm pytest iniconfig pluggy
  ls $WHEELS
  exit
fi
: "${OUT:?set OUT to a folder for the logs}"
export PYTHONUNBUFFERED=1 LFBYTE_CACHE=/tmp/lfcache PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/env.txt
if [ -d $WHEELS ]; then  # offline: the device's CUDA torch (and its triton) stay; each wheel on its own
  for w in $WHEELS/*.whl; do python3 -m pip install -q --no-deps "$w" 2>&1 | tail -1; done
else
  python3 -m pip install -q -e ".[gpu,dev]" 2>&1 | tail -2
fi
python3 -c "import torch, triton, fla; print('torch', torch.__version__, 'triton', triton.__version__, 'fla-core', \
fla.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a $OUT/env.txt

echo "=== tests/test_kernels.py"
timeout 240 python3 -m pytest tests/test_kernels.py -q -p no:cacheprovider -rs > $OUT/test_kernels.log 2>&1
echo "exit $?"; tail -n 5 $OUT/test_kernels.log

echo "=== speed.py"
timeout 120 python3 experiments/gpu_kernels/speed.py > $OUT/speed.log 2>&1
echo "exit $?"; cat $OUT/speed.log

echo "=== lfbyte.bench.decode (auto: fused kernels)"
timeout 60 python3 -m lfbyte.bench.decode device=cuda preset=base 'contexts=[64,512,960]' repeats=3 \
  > $OUT/bench_decode.log 2>&1
echo "exit $?"; cat $OUT/bench_decode.log

common="model=base trainer.precision=bf16 trainer.batch_size=32 trainer.epochs=null trainer.max_steps=60
  trainer.log_interval=10 trainer.eval_interval=100000 trainer.eval_windows=64 trainer.progress=false"
for kernel in torch auto; do  # same seed and data: the losses should agree to bf16 rounding
  echo "=== train model=base bf16, model.mixer_kernel=$kernel"
  timeout 120 python3 -m lfbyte.train $common model.mixer_kernel=$kernel hydra.run.dir=/tmp/runs/$kernel \
    > $OUT/train_$kernel.log 2>&1
  echo "exit $?"; grep -m1 "token mixing:" $OUT/train_$kernel.log
  cp /tmp/runs/$kernel/metrics.jsonl $OUT/train_$kernel.metrics.jsonl 2>/dev/null
  python3 - /tmp/runs/$kernel <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl")]
r = [x for x in rows if "bytes_per_s" in x and x["step"] > 20]
losses = [x["train_loss"] for x in rows if "train_loss" in x]
if r:
    print(f"median bytes/s {statistics.median(x['bytes_per_s'] for x in r):,.0f}  train_loss {losses[:3]} .. {losses[-1]}")
PY
done
