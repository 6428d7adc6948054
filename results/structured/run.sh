#!/usr/bin/env bash
# The structured-pruning study of issue 19 for one architecture: filter criteria (ℓ1, FPGM,
# batch-norm statistics, group SNR of a mean-field network) and GReg-2 at filter level, each at
# about 40% and 60% of the FLOPs removed, fine-tuned with the masks held, then compacted and
# measured (accuracy, ECE, FLOPs, parameters, speed-up at batch 1 and 128).
#
#   results/structured/run.sh resnet20     # or vgg11; resumable: a finished cell is skipped
#
# Runs go to runs/structured-ARCH/ (not committed); every finished cell copies its summaries to
# results/structured/cells/ARCH/CELL/ (committed), from which table.py makes table.md. Env:
# B (the secateur binary, default target/release/secateur), REPS (timed passes at batch 128 for
# the speed-up, five times as many at batch 1; default 10), FT_EPOCHS (fine-tune, default 3),
# CRITERIA (the methods to run, default "l1 fpgm bn-relu group-snr greg2"; group-snr first
# trains the mean-field twin, hours for VGG-11 on two cores), TAG (appended to the architecture
# in the cells' folder, results/structured/cells/ARCH$TAG: e.g. TAG=-intel-twin keeps cells made
# on another kind of host apart from the architecture's own, with their own host.txt).
set -euo pipefail
ARCH=${1:?usage: run.sh resnet20|vgg11}
B=${B:-target/release/secateur}
REPS=${REPS:-10}
FT_EPOCHS=${FT_EPOCHS:-3}
CFG=experiments/configs/structured-$ARCH.toml
R=runs/structured-$ARCH${TAG:-}
C=results/structured/cells/$ARCH${TAG:-}
mkdir -p "$R" "$C"

# One architecture's cells come from one kind of host: training is bit-reproducible on one host
# (and across thread counts), not across the Intel and AMD hosts (the dense ResNet-20 reaches
# 0.8930 on the AMD EPYC and 0.8885 on the Intel Xeon from the same seed). runs/ is not kept
# between sessions, so each session retrains the dense network; on the same kind of host it is
# the same network, on another it is not, and the cells would prune different networks.
vendor=$(lscpu | sed -n 's/^Vendor ID:[[:space:]]*//p' | head -n 1)
if [ -f "$C/host.txt" ]; then
  made_on=$(cat "$C/host.txt")
  if [ "$made_on" != "$vendor" ] && [ "${ALLOW_HOST:-0}" != 1 ]; then
    echo "run.sh: the $ARCH cells were made on a $made_on host, this one is $vendor; run it there (ALLOW_HOST=1 to mix)" >&2
    exit 1
  fi
else
  echo "$vendor" > "$C/host.txt"
fi

# the dense network
[ -f "$R/dense/metrics.json" ] || { rm -rf "$R/dense"; $B train --config "$CFG" --out "$R/dense" --quiet; }
mkdir -p "$C/dense"; cp "$R/dense/metrics.json" "$C/dense/"
# its mean-field twin, whose posterior the group-SNR criterion reads (trained when first needed)
mean_field() {
  [ -f "$R/mean-field/metrics.json" ] || { rm -rf "$R/mean-field"; $B train --config "$CFG" \
    --set 'model.layers="mean-field"' --out "$R/mean-field" --quiet; }
  mkdir -p "$C/mean-field"; cp "$R/mean-field/metrics.json" "$C/mean-field/"
}

finish() { # cell run: compact the fine-tuned run and keep the summaries
  local cell=$1 run=$2 prune=${3:-}
  rm -rf "$R/$cell/small"
  $B compact --run "$run" --out "$R/$cell/small" --latency-reps "$REPS" > /dev/null
  mkdir -p "$C/$cell.tmp"
  cp "$R/$cell/small/compact.json" "$R/$cell/small/compact.md" "$C/$cell.tmp/"
  cp "$run/metrics.json" "$C/$cell.tmp/finetune-metrics.json"
  [ -n "$prune" ] && cp "$prune/prune.json" "$prune/layers.md" "$C/$cell.tmp/"
  rm -rf "${C:?}/$cell"; mv "$C/$cell.tmp" "$C/$cell"
  echo "done: $ARCH $cell"
}

CRITERIA=${CRITERIA:-l1 fpgm bn-relu group-snr greg2}
for crit in $CRITERIA; do
  [ "$crit" = greg2 ] && continue   # below
  for frac in 0.4 0.6; do
    cell=$crit-$frac
    [ -f "$C/$cell/compact.json" ] && continue
    src=$R/dense
    if [ "$crit" = group-snr ]; then mean_field; src=$R/mean-field; fi
    rm -rf "$R/$cell"; mkdir -p "$R/$cell"
    $B prune --method structured --criterion "$crit" --sparsity "$frac" --run "$src" --out "$R/$cell/prune" > /dev/null
    $B train --config "$src/config.toml" --set "bayes.init_from=\"$src\"" --masks "$R/$cell/prune/masks.safetensors" \
      --set train.epochs="$FT_EPOCHS" --set train.schedule.total="$FT_EPOCHS" --set optim.lr=0.01 \
      --out "$R/$cell/ft" --quiet > /dev/null
    finish "$cell" "$R/$cell/ft" "$R/$cell/prune"
  done
done
greg_targets="0.4 0.6"
case " $CRITERIA " in *" greg2 "*) ;; *) greg_targets="" ;; esac
[ "$ARCH" = vgg11 ] && [ -n "$greg_targets" ] && greg_targets="0.4 0.6 0.64"   # 0.64: f = 0.4, the cell an earlier run.sh called 0.4
for frac in $greg_targets; do
  # GReg-2 at filter level from the dense weights: its sparsity is the fraction f of each layer's
  # filters. A ResNet's blocks lose inner channels only, so f is about the fraction of FLOPs; a
  # VGG loses f of both the inputs and the outputs of every inner convolution, so its FLOPs fall
  # by about 1 − (1 − f)², and f = 1 − √(1 − target) (0.225 for 0.4, 0.368 for 0.6).
  cell=greg2-$frac
  case $ARCH in
    vgg*) filters=$(python3 -c "import math; print(round(1 - math.sqrt(1 - $frac), 3))") ;;
    *) filters=$frac ;;
  esac
  if [ ! -f "$C/$cell/compact.json" ]; then
    rm -rf "$R/$cell"; mkdir -p "$R/$cell"
    $B train --config experiments/configs/structured-greg2.toml --set "model.arch=\"$ARCH\"" \
      --set "greg.weights=\"$R/dense/weights.safetensors\"" --set greg.sparsity="$filters" \
      --set train.epochs="$FT_EPOCHS" --set train.schedule.total="$FT_EPOCHS" --out "$R/$cell/ft" --quiet > /dev/null
    finish "$cell" "$R/$cell/ft"
  fi
done
