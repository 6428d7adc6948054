#!/usr/bin/env bash
# Issue 22: spike-and-slab node selection on LeNet-300-100 next to the Gaussian-scale-mixture
# gates, sparse VD and the deterministic network, shipped Fashion-MNIST subset, seeds 0 1 2.
#
#   results/spike-slab/run.sh 0 1 2          # seeds to run (resumable: a finished cell is skipped)
#   results/spike-slab/run.sh 0 1 2 &  results/spike-slab/run.sh 0 1 2   # two workers share the cells
#   target/notebook-venv/bin/python results/spike-slab/table.py > results/spike-slab/table.md
#
# Runs go to runs/spike-slab-study/ (not committed); each finished cell copies metrics.json,
# history.csv and, where the run draws it, units.png to results/spike-slab/cells/CELL/.
# A worker takes a cell by creating runs/spike-slab-study/CELL.lock (remove stale locks after a
# kill). Env: B (the secateur binary, default target/release/secateur).
set -euo pipefail
B=${B:-target/release/secateur}
R=runs/spike-slab-study
C=results/spike-slab/cells
K=experiments/configs
mkdir -p "$R" "$C"

cell() { # cell NAME SEED CONFIG [--set ...]
  local name=$1 seed=$2 cfg=$3; shift 3
  [ -f "$C/$name-s$seed/metrics.json" ] && return 0
  mkdir "$R/$name-s$seed.lock" 2>/dev/null || return 0
  rm -rf "$R/$name-s$seed"
  $B train --config "$K/$cfg" --set seed="$seed" "$@" --out "$R/$name-s$seed" --quiet
  mkdir -p "$C/$name-s$seed.tmp"
  cp "$R/$name-s$seed/metrics.json" "$R/$name-s$seed/history.csv" "$C/$name-s$seed.tmp/"
  [ -f "$R/$name-s$seed/units.png" ] && cp "$R/$name-s$seed/units.png" "$C/$name-s$seed.tmp/"
  rm -rf "${C:?}/$name-s$seed"; mv "$C/$name-s$seed.tmp" "$C/$name-s$seed"
  rmdir "$R/$name-s$seed.lock"
  echo "done: $name seed $seed"
}

for seed in "$@"; do
  cell deterministic "$seed" sparse-vd-lenet300.toml --set 'model.layers="deterministic"'
  cell sparse-vd "$seed" sparse-vd-lenet300.toml
  cell gsm-gates "$seed" gsm-gates-lenet300.toml
  cell spike-slab "$seed" spike-slab-lenet300.toml                                  # 150 epochs
  cell spike-slab-e100 "$seed" spike-slab-lenet300.toml --set train.epochs=100        # before 150
  cell spike-slab-kl1 "$seed" spike-slab-lenet300.toml --set train.epochs=100 --set 'bayes.beta={kind="linear",delay=10,warmup=30,max=1.0}'
done
# the mean-field network without node selection, same recipe, divergence weight 1 (seed 0)
cell mean-field-kl1 0 spike-slab-lenet300.toml --set train.epochs=100 --set 'model.layers="mean-field"' --set bayes.spike_slab_layerwise=false --set 'bayes.beta={kind="linear",delay=10,warmup=30,max=1.0}'
