#!/usr/bin/env bash
# The learned-pruning study of issue 20 on ResNet-20 (shipped Fashion-MNIST subset): SCL, DCFF,
# CAP and FSM next to the ℓ1 and FPGM filter criteria, at about 50% of the FLOPs removed —
# accuracy of the compacted network (scored by `secateur eval`), FLOPs, parameters, measured
# speed-up after compaction, training time.
#
#   results/learned/run.sh            # resumable: a finished cell is skipped
#
# Runs go to runs/learned-resnet20/ (not committed); every finished cell copies its summaries to
# results/learned/cells/CELL/ (committed), from which table.py makes table.md. Env: B (the
# secateur binary, default target/release/secateur), REPS (timed passes at batch 128, five times
# as many at batch 1; default 10), FT_EPOCHS (fine-tunes, default 3), LEARNED (the learned
# methods and their order, default "scl dcff cap"), SCL_LAMBDAS and SCL_MASK_LR (SCL's λ, one
# cell each, and mask step, default "0.02 0.03" and 0.05: ResNet-20 takes 79 steps per epoch
# here; at the library's λ = 0.2 it keeps 5% of the connections by epoch 3 and falls to 0.28),
# CAP_LAMBDA (default 3; at the library's 0.2 the regulariser hardly moves on ResNet-20's 336
# gated channels and nothing is cut). All cells come from one kind
# of host (recorded in cells/host.txt; ALLOW_HOST=1 mixes), as in results/structured/run.sh.
set -euo pipefail
B=${B:-target/release/secateur}
REPS=${REPS:-10}
FT_EPOCHS=${FT_EPOCHS:-3}
CFG=experiments/configs/structured-resnet20.toml
R=runs/learned-resnet20
C=results/learned/cells
mkdir -p "$R" "$C"

vendor=$(lscpu | sed -n 's/^Vendor ID:[[:space:]]*//p' | head -n 1)
if [ -f "$C/host.txt" ]; then
  if [ "$(cat "$C/host.txt")" != "$vendor" ] && [ "${ALLOW_HOST:-0}" != 1 ]; then
    echo "run.sh: the cells were made on a $(cat "$C/host.txt") host, this one is $vendor (ALLOW_HOST=1 to mix)" >&2
    exit 1
  fi
else
  echo "$vendor" > "$C/host.txt"
fi

ft() { # fine-tune the compacted network in $1 into $2
  $B train --config "$1/config.toml" --set "bayes.init_from=\"$1\"" --set train.epochs="$FT_EPOCHS" \
    --set train.schedule.total="$FT_EPOCHS" --set optim.lr=0.01 --out "$2" --quiet > /dev/null
}
keep() { # cell, the compaction (compact.json; "-" for none), the network `eval` scores, then the
          # training runs whose metrics.json count (their wall time)
  local cell=$1 small=$2 scored=$3; shift 3
  mkdir -p "$C/$cell.tmp"
  [ "$small" = - ] || cp "$small/compact.json" "$small/compact.md" "$C/$cell.tmp/"
  $B eval --run "$scored" > "$C/$cell.tmp/eval.txt"
  local i=0
  for run in "$@"; do cp "$run/metrics.json" "$C/$cell.tmp/train-$i-metrics.json"; i=$((i + 1)); done
  rm -rf "${C:?}/$cell"; mv "$C/$cell.tmp" "$C/$cell"
  echo "done: $cell"
}

# the dense network
if [ ! -f "$C/dense/eval.txt" ]; then
  [ -f "$R/dense/metrics.json" ] || { rm -rf "$R/dense"; $B train --config "$CFG" --out "$R/dense" --quiet > /dev/null; }
  keep dense - "$R/dense" "$R/dense"
fi

# filter criteria on the dense network: prune, fine-tune with the masks held, compact
for crit in l1 fpgm fsm; do
  cell=$crit-0.5
  [ -f "$C/$cell/eval.txt" ] && continue
  rm -rf "$R/$cell"; mkdir -p "$R/$cell"
  $B prune --method structured --criterion "$crit" --sparsity 0.5 --run "$R/dense" --out "$R/$cell/prune" > /dev/null
  if [ "$crit" = fsm ]; then
    # FSM's own recovery (the compensated batch-norm statistics), no fine-tune
    $B compact --run "$R/$cell/prune" --out "$R/$cell/small-noft" --latency-reps "$REPS" > /dev/null
    keep fsm-0.5-noft "$R/$cell/small-noft" "$R/$cell/small-noft" "$R/dense"
  fi
  $B train --config "$R/dense/config.toml" --set "bayes.init_from=\"$R/dense\"" --masks "$R/$cell/prune/masks.safetensors" \
    --set train.epochs="$FT_EPOCHS" --set train.schedule.total="$FT_EPOCHS" --set optim.lr=0.01 \
    --out "$R/$cell/ft" --quiet > /dev/null
  $B compact --run "$R/$cell/ft" --out "$R/$cell/small" --latency-reps "$REPS" > /dev/null
  keep "$cell" "$R/$cell/small" "$R/$cell/small" "$R/dense" "$R/$cell/ft"
done

# learned during training, from scratch with the dense network's recipe
for method in ${LEARNED:-scl dcff cap}; do
  case $method in
  scl)
    for lam in ${SCL_LAMBDAS:-0.02 0.03}; do
      cell=scl-$lam
      [ -f "$C/$cell/eval.txt" ] && continue
      if [ ! -f "$R/$cell/train/metrics.json" ]; then
        rm -rf "$R/$cell"
        $B train --config "$CFG" --set 'name="scl-resnet20"' --set 'pruning.method="scl"' \
          --set pruning.scl.lambda="$lam" --set pruning.scl.mask_lr="${SCL_MASK_LR:-0.05}" \
          --out "$R/$cell/train" --quiet > /dev/null
      fi
      rm -rf "$R/$cell/small"
      $B compact --run "$R/$cell/train" --out "$R/$cell/small" --latency-reps "$REPS" > /dev/null
      keep "$cell" "$R/$cell/small" "$R/$cell/small" "$R/$cell/train"
    done
    ;;
  dcff)
    [ -f "$C/dcff/eval.txt" ] && continue
    rm -rf "$R/dcff"
    $B train --config experiments/configs/dcff-resnet20.toml --out "$R/dcff/train" --quiet > /dev/null
    $B compact --run "$R/dcff/train" --out "$R/dcff/small" --latency-reps "$REPS" > /dev/null
    keep dcff "$R/dcff/small" "$R/dcff/small" "$R/dcff/train"
    ;;
  cap)
    [ -f "$C/cap/eval.txt" ] && continue
    if [ ! -f "$R/cap/train/metrics.json" ]; then
      rm -rf "$R/cap"
      $B train --config experiments/configs/cap-resnet20.toml --set pruning.cap.lambda="${CAP_LAMBDA:-3}" \
        --out "$R/cap/train" --quiet > /dev/null
    fi
    rm -rf "$R/cap/small" "$R/cap/ft"
    $B compact --run "$R/cap/train" --out "$R/cap/small" --latency-reps "$REPS" > /dev/null
    keep cap-noft "$R/cap/small" "$R/cap/small" "$R/cap/train"
    ft "$R/cap/small" "$R/cap/ft"
    keep cap "$R/cap/small" "$R/cap/ft" "$R/cap/train" "$R/cap/ft"
    ;;
  *) echo "run.sh: unknown method $method (scl, dcff, cap)" >&2; exit 1 ;;
  esac
done
