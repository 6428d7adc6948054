#!/usr/bin/env bash
# Per-thread CPU use of a running benchmark: how many cores each thread of the process keeps
# busy over a window in the steady part of the run (issue 24, BENCHMARKS.md "How busy the two
# cores are during a step").
#
#   bench/thread_usage.sh secateur mlp 8000     # target/release/bench_step, 8000 steps
#   bench/thread_usage.sh pytorch resnet20 60   # bench/pytorch_step.py with $PY
#
# Env: THREADS (2), BATCH (128), SKIP (seconds before the window, 3), WINDOW (seconds, 6),
# BIN (target/release/bench_step), PY (bench/.venv/bin/python). The run must last longer than
# SKIP + WINDOW. Prints one line per thread that used more than 0.01 core in the window, and
# the run's median step time.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SIDE=${1:?usage: thread_usage.sh secateur|pytorch MODEL STEPS}
MODEL=${2:?model}
STEPS=${3:?steps}
THREADS=${THREADS:-2}; BATCH=${BATCH:-128}; SKIP=${SKIP:-3}; WINDOW=${WINDOW:-6}
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
out=$(mktemp)
trap 'rm -f "$out"' EXIT
case $SIDE in
  secateur) "${BIN:-target/release/bench_step}" --model "$MODEL" --batch "$BATCH" --steps "$STEPS" \
              --warmup 5 --json >"$out" 2>/dev/null & ;;
  pytorch) "${PY:-bench/.venv/bin/python}" bench/pytorch_step.py --model "$MODEL" --batch "$BATCH" \
              --steps "$STEPS" --warmup 5 --threads "$THREADS" --json >"$out" 2>/dev/null & ;;
  *) echo "side must be secateur or pytorch" >&2; exit 2 ;;
esac
pid=$!
# tid, comm, utime + stime (clock ticks) of every thread of $pid
snap() {
  for t in /proc/"$pid"/task/*; do
    [ -r "$t/stat" ] || continue
    awk -v tid="${t##*/}" '{ c = $0; sub(/^[^(]*\(/, "", c); n = c; sub(/\).*$/, "", n); sub(/^.*\) /, "", c);
      split(c, f, " "); print tid, n, f[12] + f[13] }' "$t/stat"
  done | sort
}
sleep "$SKIP"; a=$(snap); sleep "$WINDOW"; b=$(snap)
wait "$pid" || { echo "the benchmark failed" >&2; exit 1; }
echo "$SIDE $MODEL, threads over ${WINDOW}s (cores):"
join <(echo "$a") <(echo "$b") | awk -v w="$WINDOW" -v hz="$(getconf CLK_TCK)" \
  '{ c = ($5 - $3) / hz / w; tot += c; if (c > 0.01) printf "  %s %s: %.2f\n", $1, $2, c } END { printf "  total: %.2f\n", tot }'
grep -o '"median_ms": *[0-9.]*' "$out" | tail -n 1
