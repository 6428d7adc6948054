#!/usr/bin/env bash
# End-to-end epochs (issue 24): every shipped training config, a few epochs of `secateur train`
# beside the same recipe in plain PyTorch (bench/pytorch_epoch.py), each epoch timed with its
# evaluation on the test set, and a Markdown table of the medians.
#
#   bench/epoch_compare.sh                                   # every config of experiments/configs
#   CONFIGS="quickstart sparse-vd-lenet300" bench/epoch_compare.sh
#
# EPOCHS (default 3; BIG_EPOCHS, default 2, for ResNet-20 and VGG-11) epochs per side; the table
# gives the median over the epochs after the first (the first warms caches and allocators on
# both sides). The β of the KL schedule is held at its largest value from the first step on both
# sides (`--set bayes.beta=…` and `--beta-max`), so the timed epochs have their divergence on.
# THREADS (2) threads on both sides (RAYON_NUM_THREADS, torch.set_num_threads). B is the
# secateur binary (default: this tree's, built in release). Configs that are not one `train` run
# (studies) or whose recipe pytorch_epoch.py does not reproduce get a row saying why.
# Results go to OUT_DIR (default bench/results/epochs-<timestamp>/): runs.jsonl and table.md,
# with each secateur run's log in runs/ (the run itself is deleted once its history is recorded);
# an OUT_DIR that already holds results is refused unless FORCE=1 (start over) or RESUME=1
# (after a kill: keep the configs already recorded in runs.jsonl, redo the rest; a config cut
# off between its two sides is run again, and the table takes each side's last line). Run it on a quiet machine:
# other work on the two cores moves PyTorch's OpenMP threads far more than secateur's.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PY:-$ROOT/bench/.venv/bin/python}"
THREADS="${THREADS:-2}"
EPOCHS="${EPOCHS:-3}"
BIG_EPOCHS="${BIG_EPOCHS:-2}"
OUT_DIR="${OUT_DIR:-$ROOT/bench/results/epochs-$(date -u +%Y%m%dT%H%M%SZ)}"
if [ -n "$(ls -A "$OUT_DIR" 2>/dev/null)" ] && [ "${FORCE:-0}" != 1 ] && [ "${RESUME:-0}" != 1 ]; then
  echo "epoch_compare.sh: $OUT_DIR already holds results; give another OUT_DIR, RESUME=1 to continue them, or FORCE=1 to replace them" >&2
  exit 1
fi
[ "${RESUME:-0}" = 1 ] || rm -rf "$OUT_DIR"
mkdir -p "$OUT_DIR/runs"
if [ ! -x "$PY" ]; then
  python3 -m venv "$ROOT/bench/.venv"
  "$ROOT/bench/.venv/bin/pip" install -q torch==2.15.0 numpy
fi
if [ -z "${B:-}" ]; then
  cargo build --release -q --bin secateur
  B="$ROOT/target/release/secateur"
fi
if [ -z "${CONFIGS:-}" ]; then
  CONFIGS=$(ls experiments/configs/*.toml | sed 's#.*/##; s#\.toml$##' | grep -v -- '-smoke$')
fi
RUNS="$OUT_DIR/runs.jsonl"
touch "$RUNS"
# whether NAME is complete in runs.jsonl: a secateur line, or a PyTorch line saying unsupported
done_already() {
  "$PY" - "$RUNS" "$1" <<'EOF'
import json, sys
done = False
for line in open(sys.argv[1]):
    try:
        d = json.loads(line)
    except ValueError:
        continue  # a line cut by a kill
    if d.get("name") == sys.argv[2] and (d["impl"] == "secateur" or not d.get("supported", False)):
        done = True
sys.exit(0 if done else 1)
EOF
}
[ -f "$OUT_DIR/machine.txt" ] && mv "$OUT_DIR/machine.txt" "$OUT_DIR/machine.before-resume.txt"
{
  echo "cpu: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)"
  echo "secateur: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!results' || echo '+changes'); $B"
  echo "threads: $THREADS; epochs: $EPOCHS (ResNet-20, VGG-11: $BIG_EPOCHS)"
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$OUT_DIR/machine.txt"

for name in $CONFIGS; do
  cfg="experiments/configs/$name.toml"
  if [ "${RESUME:-0}" = 1 ] && done_already "$name"; then
    echo "== $name: already in runs.jsonl" >&2
    continue
  fi
  # β override and epoch count, from the config
  read -r beta arch <<< "$("$PY" - "$cfg" <<'EOF'
import sys, tomllib
c = tomllib.load(open(sys.argv[1], "rb"))
b = c.get("bayes", {}).get("beta", {"kind": "constant", "value": 1.0})
top = b.get("value", 1.0) if b.get("kind", "constant") == "constant" else b.get("max", 1.0)
print(f'{{kind="constant",value={float(top)!r}}}', c.get("model", {}).get("arch", "-"))
EOF
)"
  e=$EPOCHS
  case "$arch" in resnet20|vgg11) e=$BIG_EPOCHS ;; esac
  echo "== $name ($arch, $e epochs)" >&2
  py_line=$(OMP_NUM_THREADS=$THREADS "$PY" bench/pytorch_epoch.py --config "$cfg" --epochs "$e" \
    --threads "$THREADS" --beta-max --json 2>/dev/null || true)
  if [ -z "$py_line" ]; then
    py_line='{"impl": "pytorch", "supported": false, "reason": "pytorch_epoch.py failed"}'
  fi
  echo "$py_line" | "$PY" -c 'import json,sys; d=json.loads(sys.stdin.read()); d["name"]=sys.argv[1]; print(json.dumps(d))' "$name" >> "$RUNS"
  supported=$(echo "$py_line" | "$PY" -c 'import json,sys; print(int(json.loads(sys.stdin.read()).get("supported", False)))')
  [ "$supported" = 1 ] || continue
  run="$OUT_DIR/runs/$name"
  rm -rf "$run"   # this script's own scratch run, perhaps cut off by a kill
  if RAYON_NUM_THREADS=$THREADS "$B" train --config "$cfg" --set "train.epochs=$e" \
      --set "bayes.beta=$beta" --out "$run" --quiet > "$OUT_DIR/runs/$name.log" 2>&1; then
    "$PY" - "$run/history.csv" "$name" >> "$RUNS" <<'EOF'
import csv, json, sys
rows = list(csv.DictReader(open(sys.argv[1])))
def num(r, k):
    v = r.get(k, "")
    return float(v) if v not in ("", None) else None
epochs = [{"epoch": int(r["epoch"]), "train_s": num(r, "seconds"), "eval_s": num(r, "eval_seconds"),
           "train_loss": num(r, "train_loss"), "test_accuracy": num(r, "test_accuracy"),
           "test_rmse": num(r, "test_rmse")} for r in rows]
print(json.dumps({"impl": "secateur", "name": sys.argv[2], "supported": True, "epochs": epochs}))
EOF
    rm -rf "$run"   # recorded: the run's checkpoints are scratch (ResNet-20 and VGG-11 ~40 MB each); its log stays
  else
    echo "{\"impl\": \"secateur\", \"name\": \"$name\", \"supported\": false, \"reason\": \"secateur train failed (see runs/$name.log)\"}" >> "$RUNS"
  fi
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT_DIR/machine.txt"
"$PY" bench/pytorch_epoch.py --table "$RUNS" > "$OUT_DIR/table.md"
cat "$OUT_DIR/machine.txt" "$OUT_DIR/table.md"
