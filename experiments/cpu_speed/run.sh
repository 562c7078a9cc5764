#!/usr/bin/env bash
# CPU speed before/after issue 11's changes, run alone on the machine (~15 min on 2 cores):
#   git worktree add --detach /tmp/before ac4e0dc       # the commit before issue 11's work
#   BEFORE=/tmp/before bash experiments/cpu_speed/run.sh
# Writes decode_*.md, throughput_*.md, decode_compiled.md and gemv_floor.md beside this script.
# (ONLY=throughput runs the training part alone.)
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${BEFORE:?set BEFORE to a checkout of the commit to compare with}"
PY=${PYTHON:-$PWD/.venv/bin/python}
HERE=$PWD/experiments/cpu_speed
side() {  # side <name> <checkout> <command...>: run the command from that checkout's code
  local name=$1 dir=$2; shift 2
  (cd "$dir" && PYTHONPATH=$dir "$PY" "$@")
}
[ "${ONLY:-}" = throughput ] || for round in 1 2; do  # alternated, twice: drift in the machine's speed shows up as a round-to-round change
  side before "$BEFORE" -m lfbyte.bench.decode 'contexts=[64,512]' repeats=5 > "$HERE/decode_before_$round.md"
  side after "$PWD" -m lfbyte.bench.decode 'contexts=[64,512]' repeats=5 > "$HERE/decode_after_$round.md"
done
if [ "${ONLY:-}" != throughput ]; then
  side after "$PWD" -m lfbyte.bench.decode 'contexts=[64,512]' repeats=3 compile=true > "$HERE/decode_compiled.md"
  side after "$PWD" experiments/cpu_speed/gemv_floor.py > "$HERE/gemv_floor.md"
fi
# training throughput, fp32 only: this CPU (AVX2, no AVX512-BF16/AMX) runs bf16 10-25x slower than fp32
# (a first attempt measured small bf16 at 126 bytes/s against 3,087 in fp32), and trainer.precision=auto
# picks fp32 here. Alternated, twice, like decoding.
for round in 1 2; do
  for s in before after; do
    dir=$([ $s = before ] && echo "$BEFORE" || echo "$PWD")
    side $s "$dir" -m lfbyte.bench 'bench.sections=[peak,throughput]' 'bench.throughput.precisions=[fp32]' \
      'bench.peak.precisions=[fp32]' "hydra.run.dir=/tmp/cpu_speed_$s" > /dev/null
    cp "/tmp/cpu_speed_$s/bench.md" "$HERE/throughput_${s}_$round.md"
  done
done
