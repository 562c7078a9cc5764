#!/usr/bin/env bash
# One short GPU check: bf16 autocast + NCCL DDP (torchrun, 1 GPU) + torch.compile; throughput and MFU.
set -uo pipefail
export PYTHONUNBUFFERED=1 LFBYTE_CACHE=/tmp/lfcache PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m pip install -q --no-deps .gpu/wheels/*.whl 2>&1 | tail -2
python3 -c "import torch, hydra; print('torch', torch.__version__, 'hydra', hydra.__version__, 'cuda', torch.cuda.is_available())"
python3 - <<'PY' | tee $OUT/peak.txt
import torch, time
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16); b = torch.randn_like(a)
for _ in range(3): a @ b
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(20): a @ b
torch.cuda.synchronize(); dt = time.perf_counter() - t
print(f"bf16 matmul peak: {2 * 8192**3 * 20 / dt / 1e12:.1f} TFLOP/s")
PY
common="trainer.epochs=null trainer.log_interval=10 trainer.eval_interval=100000 trainer.eval_windows=64 trainer.progress=false"
run() {  # name, timeout, args...
  local name=$1 limit=$2; shift 2
  echo "=== $name: $*"
  timeout $limit torchrun --standalone --nproc-per-node=1 -m lfbyte.train $common hydra.run.dir=/tmp/runs/$name "$@" > $OUT/$name.log 2>&1
  echo "exit $?"; tail -n 3 $OUT/$name.log
  cp /tmp/runs/$name/metrics.jsonl $OUT/$name.metrics.jsonl 2>/dev/null
  python3 - /tmp/runs/$name <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl")]
r = [x for x in rows if "bytes_per_s" in x and x["step"] > 30]
if r:
    print(f"median bytes/s {statistics.median(x['bytes_per_s'] for x in r):,.0f}  model TFLOP/s {statistics.median(x['model_tflops'] for x in r):.1f}  last train_loss {rows[-1].get('train_loss', rows[-2].get('train_loss'))}")
m = json.load(open(sys.argv[1] + "/metrics.json")); print({k: m.get(k) for k in ("status", "step", "val_bpb", "precision", "world_size")})
PY
}
run base_bf16_eager 90 model=base trainer.precision=bf16 trainer.max_steps=80 trainer.batch_size=32
run base_bf16_compile 180 model=base trainer.precision=bf16 trainer.compile=true trainer.max_steps=120 trainer.batch_size=32
run gpt_base_bf16_compile 120 model=gpt_base trainer.precision=bf16 trainer.compile=true trainer.max_steps=120 trainer.batch_size=32
# optimizer.lr: what the recorded run trained at (model=small's default then; its tuned default is now 1.2e-3)
run small_fp16 60 model=small optimizer.lr=2e-3 trainer.precision=fp16 trainer.max_steps=60 trainer.batch_size=32
