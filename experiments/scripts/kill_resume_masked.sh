#!/usr/bin/env bash
# kill -9 during a masked training run, resume it, and compare with an uninterrupted run (issue 14).
# Prints "OK" and exits 0 when the final weights, predictions and history (all but the timing
# column) are bit-identical and every pruned weight is still exactly zero.
#
#   cargo build --release && experiments/scripts/kill_resume_masked.sh [EPOCH_TO_KILL_AT]
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${SECATEUR:-target/release/secateur}
K=${1:-2}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
CFG=experiments/configs/pai-lenet5.toml
SET=(--set train.epochs=4 --set train.schedule.total=4)
$B prune --criterion snip --sparsity 0.9 --config $CFG --out "$T/snip90" >/dev/null
$B train --config $CFG --masks "$T/snip90/masks.safetensors" "${SET[@]}" --out "$T/straight" --quiet >/dev/null
$B train --config $CFG --masks "$T/snip90/masks.safetensors" "${SET[@]}" --out "$T/killed" --quiet >/dev/null 2>&1 &
P=$!
until [ -e "$T/killed/checkpoints/epoch-$(printf %04d "$K")" ]; do sleep 0.02; done
kill -9 $P
wait $P 2>/dev/null || true
echo "killed with checkpoints: $(ls "$T/killed/checkpoints" | tr '\n' ' ')"
$B train --resume "$T/killed" --quiet >/dev/null
cmp "$T/straight/weights.safetensors" "$T/killed/weights.safetensors"
cmp "$T/straight/predictions.safetensors" "$T/killed/predictions.safetensors"
diff <(cut -d, -f1-12 "$T/straight/history.csv") <(cut -d, -f1-12 "$T/killed/history.csv")
python3 - "$T/killed/weights.safetensors" "$T/snip90/masks.safetensors" <<'PY'
import json, struct, sys, array
def load(p):
    b = open(p, 'rb').read(); n = struct.unpack('<Q', b[:8])[0]
    return json.loads(b[8:8 + n]), b[8 + n:]
(hw, dw), (hm, dm) = load(sys.argv[1]), load(sys.argv[2])
bad = 0
for k, v in hm.items():
    if k == '__metadata__':
        continue
    s, e = v['data_offsets']; ws, we = hw[k]['data_offsets']
    w = array.array('f'); w.frombytes(dw[ws:we])
    bad += sum(1 for i, m in enumerate(dm[s:e]) if m == 0 and w[i] != 0.0)
print(f"pruned weights that are non-zero: {bad}")
sys.exit(1 if bad else 0)
PY
echo OK
