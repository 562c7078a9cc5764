#!/usr/bin/env bash
# Runs experiment=tune's grid for two models, one job of each side by side (1 thread each), so both
# architectures always train under the same load. Each pair holds a lock that other timed work
# on the machine takes too (flock $LOCK <command>), so no timing is shared with a third process.
#   bash experiments/tune/run_pairs.sh OUT_DIR MODEL_A MODEL_B "LRS" "WARMUPS" "SEEDS" [extra overrides...]
set -uo pipefail
out=$1 a=$2 b=$3 lrs=$4 warmups=$5 seeds=$6; shift 6
LOCK=${LOCK:-/tmp/lfbyte-cpu.lock}
py=${PYTHON:-.venv/bin/python}
n=0
for seed in $seeds; do for lr in $lrs; do for w in $warmups; do
  name=$(printf "%02d" $n)_lr${lr}_warmup${w}_seed${seed}; n=$((n + 1))
  if [ -f "$out/$a/$name/metrics.json" ] && [ -f "$out/$b/$name/metrics.json" ]; then continue; fi
  mkdir -p "$out"; flock "$LOCK" bash -c '
    for m in "$0" "$1"; do
      "$2" -m lfbyte.train experiment=tune model=$m optimizer.lr=$3 optimizer.warmup_steps=$4 seed=$5 "${@:8}" \
        hydra.mode=RUN hydra.run.dir="$6/$m/$7" > /dev/null 2> "$6/$m.$7.err" &
    done
    wait' "$a" "$b" "$py" "$lr" "$w" "$seed" "$out" "$name" "$@"
  echo "$(date +%T) done $name"
done; done; done
