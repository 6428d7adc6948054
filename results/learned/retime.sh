#!/usr/bin/env bash
# Re-measures the latencies of every compacted cell of the learned-pruning study on a quiet
# machine (the compactions are rerun with --force; the networks, and so every other column, are
# unchanged): results/learned/run.sh times them while other training runs share the two cores.
#
#   results/learned/retime.sh      # nothing else running
set -euo pipefail
B=${B:-target/release/secateur}
REPS=${REPS:-10}
C=results/learned/cells
for cell in "$C"/*/; do
  cell=${cell%/}
  [ -f "$cell/compact.json" ] || continue
  R=runs/learned-resnet20
  name=$(basename "$cell")
  case $name in
    cap | cap-noft) run=$R/cap/train small=$R/cap/small ;;
    fsm-0.5-noft) run=$R/fsm-0.5/prune small=$R/fsm-0.5/small-noft ;;
    scl-* | dcff) run=$R/$name/train small=$R/$name/small ;;
    *) run=$R/$name/ft small=$R/$name/small ;;
  esac
  $B compact --run "$run" --out "$small" --force --latency-reps "$REPS" > /dev/null
  cp "$small/compact.json" "$small/compact.md" "$cell/"
  echo "retimed: $name"
done
