#!/usr/bin/env bash
# Runs training jobs two at a time (one core each), in the order of a queue file whose lines are
#   <run dir> <overrides...>          (blank lines and lines starting with # are skipped)
# A queue that ran on another tree than the one it is committed with says so in a `# commit: <sha> ...` line (check
# that tree out to rerun it); every other queue must compose on today's code (tests/test_experiments.py checks).
# Jobs whose metrics.json says completed are skipped, so an interrupted queue resumes where it stopped (a job
# killed mid-run writes a metrics.json too, with another status: it runs again).
# Each pair holds a lock that other timed work on the machine takes too (flock $LOCK <command>),
# so no measurement shares the cores with a third process.
#   bash experiments/run_queue.sh experiments/compare/queue_2min.txt
set -uo pipefail
LOCK=${LOCK:-/tmp/lfbyte-cpu.lock}
py=${PYTHON:-.venv/bin/python}
mapfile -t lines < <(grep -v '^\s*\(#\|$\)' "$1")
run() {  # run dir, overrides...
  local dir=$1; shift
  mkdir -p "$(dirname "$dir")"
  # an unfinished job (no metrics.json) starts again; trainer.overwrite moves its remains aside
  "$py" -m lfbyte.train "$@" trainer.overwrite=true hydra.mode=RUN hydra.run.dir="$dir" > /dev/null 2> "$dir.err"
}
pending=()
for line in "${lines[@]}"; do
  read -r -a words <<< "$line"
  grep -qs '"status": "completed"' "${words[0]}/metrics.json" || pending+=("$line")
done
for ((i = 0; i < ${#pending[@]}; i += 2)); do
  read -r -a a <<< "${pending[i]}"
  b=()
  if ((i + 1 < ${#pending[@]})); then read -r -a b <<< "${pending[i + 1]}"; fi
  export -f run; export py
  flock "$LOCK" bash -c 'run "${@:2:$1}" & if (($# > $1 + 1)); then run "${@:$(($1 + 2))}" & fi; wait' \
    _ "${#a[@]}" "${a[@]}" "${b[@]}"
  echo "$(date +%T) done ${a[0]} ${b[0]:-}"
done
