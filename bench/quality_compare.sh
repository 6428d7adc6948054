#!/usr/bin/env bash
# Side-by-side quality comparison (issue 23): secateur vs bayesian-torch, LeNet-5 on the shipped
# Fashion-MNIST subset, for mean-field (one weight draw per step), Flipout and MC dropout.
#
#   bench/quality_compare.sh                               # 3 kinds x seeds 0 1 2, 25 epochs
#   KINDS="mean-field" SEEDS="0" bench/quality_compare.sh  # a subset
#   EPOCHS=1 OUT=/tmp/qc bench/quality_compare.sh          # a quick smoke run elsewhere
#   BT_KL=library SEC_KL=tensor-mean bench/quality_compare.sh   # only bayesian-torch's objective
#   target/quality-venv/bin/python bench/quality_compare.py --table runs/quality-compare/runs.jsonl
#
# For each KIND in $KINDS (default: mean-field flipout mc-dropout) and SEED in $SEEDS (0 1 2),
# alternating: secateur (`$SECATEUR train --config experiments/configs/quality-lenet5-$KIND.toml`,
# RAYON_NUM_THREADS=$THREADS, run directory $OUT/secateur-$KIND-s$SEED), then the PyTorch side
# (bench/quality_compare.py, torch threads $THREADS). One JSON line per run is appended to
# $OUT/runs.jsonl; runs already there (same library, kind, seed, epochs) are skipped, so a killed
# sweep resumes where it stopped. A secateur run directory without metrics.json (killed run), or
# whose metrics.json is for another epoch count, is deleted and run again; one with a matching
# metrics.json that is not yet in runs.jsonl is recorded without re-running. At the end the
# Markdown table (mean ± sample std over seeds, paired per-seed differences) is printed.
#
# Environment: SECATEUR (target/release/secateur), VENV (target/quality-venv; set up as in
# bench/quality_compare.requirements.txt), OUT (runs/quality-compare), EPOCHS (25), THREADS (2),
# DATA (data/fashion-mnist-mini), BT_KL (library: bayesian-torch's own KL, per-tensor means;
# `sum`: the full summed KL of the ELBO; default both), SEC_KL (secateur's `bayes.kl_reduction`:
# `sum`, the ELBO, row `secateur`; `tensor-mean`, bayesian-torch's objective, row
# `secateur/tensor-mean`; default both). The paired differences compare runs of one objective:
# `secateur` with `bayesian-torch/kl-sum`, `secateur/tensor-mean` with `bayesian-torch`.
# Wall times are only comparable on an otherwise idle machine: under CPU contention PyTorch's
# OpenMP threads spin-wait and slow down many-fold (OMP_WAIT_POLICY=PASSIVE avoids that).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SECATEUR="${SECATEUR:-target/release/secateur}"
VENV="${VENV:-target/quality-venv}"
OUT="${OUT:-runs/quality-compare}"
EPOCHS="${EPOCHS:-25}"
THREADS="${THREADS:-2}"
DATA="${DATA:-data/fashion-mnist-mini}"
KINDS="${KINDS:-mean-field flipout mc-dropout}"
SEEDS="${SEEDS:-0 1 2}"
BT_KL="${BT_KL:-library sum}"
SEC_KL="${SEC_KL:-sum tensor-mean}"
PY="$VENV/bin/python"
RUNS="$OUT/runs.jsonl"

[[ -x "$SECATEUR" ]] || { echo "no secateur binary at $SECATEUR (cargo build --release)" >&2; exit 1; }
[[ -x "$PY" ]] || { echo "no Python at $PY: see bench/quality_compare.requirements.txt" >&2; exit 1; }
mkdir -p "$OUT"
touch "$RUNS"

# has_run LIBRARY KIND SEED: is that run (at $EPOCHS epochs) in runs.jsonl?
has_run() {
  "$PY" - "$RUNS" "$1" "$2" "$3" "$EPOCHS" <<'EOF'
import json, sys
path, lib, kind, seed, epochs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
with open(path) as f:
    for line in f:
        line = line.strip()
        if not line:
            continue
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if (r.get("library"), r.get("kind"), r.get("seed"), r.get("epochs")) == (lib, kind, seed, epochs):
            sys.exit(0)
sys.exit(1)
EOF
}

# secateur_line DIR KIND SEED LIBRARY KL: the runs.jsonl line of a finished secateur run (exit 1
# if the directory has no metrics.json or one for another epoch count)
secateur_line() {
  "$PY" - "$1" "$2" "$3" "$EPOCHS" "$THREADS" "$("$SECATEUR" --version 2>/dev/null || echo unknown)" "$4" "$5" <<'EOF'
import json, os, sys
d, kind, seed, epochs, threads, version, lib, kl = sys.argv[1:9]
path = os.path.join(d, "metrics.json")
if not os.path.isfile(path):
    sys.exit(1)
m = json.load(open(path))
if int(m.get("epochs", -1)) != int(epochs):
    sys.exit(1)
out = {"library": lib, "kind": kind, "seed": int(seed)}
for k in ("test_accuracy", "test_nll", "test_brier", "test_ece", "wall_seconds"):
    out[k] = m[k]
out.update(epochs=int(epochs), kl=kl, threads=int(threads), secateur=version.split()[-1], run_dir=d)
print(json.dumps(out))
EOF
}

run_secateur() {
  local kind="$1" seed="$2" kl="$3" lib="secateur" dir="$OUT/secateur-$1-s$2" line
  if [[ "$kl" == "tensor-mean" ]]; then lib="secateur/tensor-mean"; dir="$OUT/secateur-$1-tensor-mean-s$2"; fi
  has_run "$lib" "$kind" "$seed" && { echo "skip $lib $kind s$seed (in $RUNS)"; return; }
  if [[ -e "$dir" ]] && ! line="$(secateur_line "$dir" "$kind" "$seed" "$lib" "$kl")"; then
    echo "removing unfinished or mismatched run directory $dir"
    rm -rf -- "$dir"
  fi
  if [[ ! -e "$dir" ]]; then
    echo "$lib $kind s$seed ($EPOCHS epochs) ..."
    RAYON_NUM_THREADS="$THREADS" "$SECATEUR" train --config "experiments/configs/quality-lenet5-$kind.toml" \
      --seed "$seed" --set "train.epochs=$EPOCHS" --set "bayes.kl_reduction=\"$kl\"" --out "$dir" --quiet
    line="$(secateur_line "$dir" "$kind" "$seed" "$lib" "$kl")" || { echo "secateur wrote no usable $dir/metrics.json" >&2; exit 1; }
  fi
  echo "$line" >> "$RUNS"
  echo "  $line"
}

run_torch() {
  local kind="$1" seed="$2" kl="$3" lib line
  lib="bayesian-torch"
  [[ "$kind" != "mc-dropout" && "$kl" == "sum" ]] && lib="bayesian-torch/kl-sum"
  has_run "$lib" "$kind" "$seed" && { echo "skip $lib $kind s$seed (in $RUNS)"; return; }
  echo "$lib $kind s$seed ($EPOCHS epochs) ..."
  line="$("$PY" bench/quality_compare.py --kind "$kind" --seed "$seed" --threads "$THREADS" \
    --data "$DATA" --epochs "$EPOCHS" --kl "$kl" | tail -n 1)"
  "$PY" -c 'import json, sys; json.loads(sys.argv[1])' "$line" \
    || { echo "bench/quality_compare.py printed no JSON line" >&2; exit 1; }
  echo "$line" >> "$RUNS"
  echo "  $line"
}

for kind in $KINDS; do
  [[ -f "experiments/configs/quality-lenet5-$kind.toml" ]] || { echo "unknown kind $kind" >&2; exit 1; }
  for seed in $SEEDS; do
    if [[ "$kind" == "mc-dropout" ]]; then
      run_secateur "$kind" "$seed" sum   # no KL
    else
      for kl in $SEC_KL; do run_secateur "$kind" "$seed" "$kl"; done
    fi
    if [[ "$kind" == "mc-dropout" ]]; then
      run_torch "$kind" "$seed" library   # no KL: one PyTorch run whatever BT_KL says
    else
      for kl in $BT_KL; do run_torch "$kind" "$seed" "$kl"; done
    fi
  done
done

echo
"$PY" bench/quality_compare.py --table "$RUNS"
