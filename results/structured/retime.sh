#!/usr/bin/env bash
# Re-measures the latencies of one architecture's compacted cells on a quiet machine: the
# compactions of run.sh are rerun with --force (same networks, so every other column is
# unchanged) and their compact.json/compact.md replace the cells'. run.sh times them while other
# runs may share the cores.
#
#   results/structured/retime.sh vgg11     # nothing else running
#   CELLS="group-snr-0.4 group-snr-0.6" results/structured/retime.sh vgg11   # only these cells
#   TAG=-intel-twin results/structured/retime.sh resnet20   # the cells of run.sh's TAG
set -euo pipefail
ARCH=${1:?usage: retime.sh resnet20|vgg11}
B=${B:-target/release/secateur}
REPS=${REPS:-10}
R=runs/structured-$ARCH${TAG:-}
C=results/structured/cells/$ARCH${TAG:-}
for cell in "$C"/*/; do
  name=$(basename "$cell")
  [ -f "$cell/compact.json" ] || continue
  if [ -n "${CELLS:-}" ] && [[ " $CELLS " != *" $name "* ]]; then continue; fi
  [ -d "$R/$name/ft" ] || { echo "retime.sh: $R/$name/ft is missing; skipped $name" >&2; continue; }
  $B compact --run "$R/$name/ft" --out "$R/$name/small" --force --latency-reps "$REPS" > /dev/null
  cp "$R/$name/small/compact.json" "$R/$name/small/compact.md" "$cell"
  echo "retimed: $ARCH $name"
done
