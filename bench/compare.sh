#!/usr/bin/env bash
# Side-by-side training-step benchmark: secateur (candle) vs plain PyTorch on the CPU.
#
#   bench/compare.sh                      # all models
#   MODELS="mlp lenet5" bench/compare.sh  # a subset
#   STEPS=20 WARMUP=3 bench/compare.sh    # same step counts for every model
#
# Sets up PyTorch in bench/.venv if missing, builds bench_step in release, then runs each model
# in separate processes on both sides with the same batch size (BATCH, 128), dtype (f32), thread
# count (THREADS, 2), warm-up and step count, and prints a markdown table of median ms per step,
# peak RSS and the ratios secateur / PyTorch, followed by the machine description. Each row also
# gives its floor (the step's FLOPs, counted by torch.utils.flop_counter on the PyTorch side, at
# the host's f32 matrix-product rate, measured first with PyTorch on the same threads), each
# side's distance to it, and each side's p90 / median of the step times.
# Raw JSON lines are kept in $OUT_DIR (default bench/results/<timestamp>/).
# HVP=0 skips the second table: one Hessian-vector product by double backprop, and one Hutchinson
# probe (the second backward pass alone), vs one gradient (forward + backward), on both sides
# (pytorch_step.py --hvp), HVP_STEPS / HVP_WARMUP timed / warm-up repetitions.
# QUIET=1 waits (at most QUIET_MAX seconds, default 600) before each run for three 5-second
# windows in which the CPUs are more than 85% idle. Every run records the CPU time that other
# processes used meanwhile ("background cores"), shown in the table when above 0.1 core.
# BENCH_STEP_BIN=/path/to/bench_step uses a prebuilt binary (e.g. one built from another commit)
# instead of building this tree's; SECATEUR_LABEL then says what it is in the machine description.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/bench/.venv"
PY="$VENV/bin/python"
BATCH="${BATCH:-128}"
THREADS="${THREADS:-2}"
MODELS="${MODELS:-mlp lenet5 resnet20 bayes-mlp bayes-lenet5}"
# Layer-kind rows: each KIND:ESTIMATOR of KINDS on each model of KIND_MODELS (bench_step and
# pytorch_step.py with --layers KIND --sampling ESTIMATOR), e.g.
#   KINDS="mean-field:weight mean-field:local mean-field:flipout sparse-vd:local" bench/compare.sh
KINDS="${KINDS:-}"
ROWS="$MODELS"
for km in ${KIND_MODELS:-lenet5}; do for k in $KINDS; do ROWS="$ROWS $km+$k"; done; done
OUT_DIR="${OUT_DIR:-$ROOT/bench/results/$(date -u +%Y%m%dT%H%M%SZ)}"
# Raw results of an earlier run are kept unless FORCE=1.
if [ -n "$(ls -A "$OUT_DIR" 2>/dev/null)" ] && [ "${FORCE:-0}" != 1 ]; then
  echo "compare.sh: $OUT_DIR already holds results; give another OUT_DIR, or FORCE=1 to replace them" >&2
  exit 1
fi
mkdir -p "$OUT_DIR"

# Per-model defaults (warm-up steps, timed steps); STEPS / WARMUP override them all.
steps_for() {
  case "$1" in
    mlp|bayes-mlp) echo "${STEPS:-100}" ;;
    lenet5|bayes-lenet5) echo "${STEPS:-50}" ;;
    resnet20) echo "${STEPS:-10}" ;;
    *) echo "${STEPS:-20}" ;;
  esac
}
warmup_for() {
  case "$1" in
    resnet20) echo "${WARMUP:-2}" ;;
    *) echo "${WARMUP:-5}" ;;
  esac
}

# --- PyTorch environment -------------------------------------------------------------------
if ! [ -x "$PY" ] || ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "compare.sh: setting up PyTorch in $VENV (first run only; large download)" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  if ! "$VENV/bin/pip" install --quiet torch numpy; then
    echo "compare.sh: pip install torch from PyPI failed; trying the PyTorch CPU index" >&2
    "$VENV/bin/pip" install --quiet torch numpy --index-url https://download.pytorch.org/whl/cpu || {
      echo "compare.sh: PyTorch could not be installed; the PyTorch column cannot be measured" >&2
      exit 1
    }
  fi
fi

# --- secateur binary ------------------------------------------------------------------------
if [ -n "${BENCH_STEP_BIN:-}" ]; then
  BIN="$BENCH_STEP_BIN"
else
  echo "compare.sh: building bench_step (release)" >&2
  cargo build --release --quiet -p secateur-experiments --bin bench_step
  BIN="$ROOT/target/release/bench_step"
fi

# Same thread count everywhere: rayon (candle, gemm), OpenMP and MKL (PyTorch).
export RAYON_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"

# CPU ticks (all CPUs): total and busy.
cpu_ticks() { awk '/^cpu / {t = 0; for (i = 2; i <= 9; i++) t += $i; print t, t - $5 - $6; exit}' /proc/stat; }
# Children's user + system CPU seconds so far, from bash's `times` (second line). `times` must run
# in this shell, not in a command-substitution subshell, so it writes to a file read afterwards.
TIMES_FILE="$OUT_DIR/.times"
child_cpu() {
  awk 'NR == 2 { s = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); s += a[1] * 60 + a[2] } print s }' "$TIMES_FILE"
}
wait_quiet() {
  [ "${QUIET:-0}" = "0" ] && return 0
  local ok=0 start=$SECONDS t1 b1 t2 b2
  while [ $ok -lt 3 ] && [ $((SECONDS - start)) -lt "${QUIET_MAX:-600}" ]; do
    read -r t1 b1 < <(cpu_ticks); sleep 5; read -r t2 b2 < <(cpu_ticks)
    if [ $((100 * (b2 - b1))) -lt $((15 * (t2 - t1))) ]; then ok=$((ok + 1)); else ok=0; fi
  done
}
# run_measured NAME CMD...: runs CMD with stdout to $OUT_DIR/NAME.json, stderr to NAME.err, and
# writes the average number of cores other processes kept busy meanwhile to NAME.bg.
NCPU="$(nproc)"
run_measured() {
  local name="$1"; shift
  wait_quiet
  local t1 b1 t2 b2 c1 c2
  times >"$TIMES_FILE"; read -r t1 b1 < <(cpu_ticks); c1="$(child_cpu)"
  "$@" >"$OUT_DIR/$name.json" 2>"$OUT_DIR/$name.err" || true
  times >"$TIMES_FILE"; read -r t2 b2 < <(cpu_ticks); c2="$(child_cpu)"
  awk -v t="$((t2 - t1))" -v b="$((b2 - b1))" -v c1="$c1" -v c2="$c2" -v n="$NCPU" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { if (t <= 0) { print 0; exit } bg = (b - (c2 - c1) * hz) / (t / n); if (bg < 0) bg = 0; printf "%.2f\n", bg }' \
    >"$OUT_DIR/$name.bg"
}

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
# The host's floor rate: the best f32 matrix-product rate on these threads (PyTorch's, 2048³).
echo "compare.sh: matrix-product rate of this host ($THREADS threads)" >&2
run_measured "gemm-rate" "$PY" "$ROOT/bench/pytorch_step.py" --gemm-rate 2048 --threads "$THREADS"
for row in $ROWS; do
  m="${row%%+*}"; kind=()
  if [ "$row" != "$m" ]; then k="${row#*+}"; kind=(--layers "${k%%:*}" --sampling "${k#*:}"); fi
  f="${row//[+:]/_}"
  s="$(steps_for "$m")"; w="$(warmup_for "$m")"
  echo "compare.sh: $row (batch $BATCH, $w warm-up + $s timed steps, $THREADS threads)" >&2
  run_measured "secateur-$f" "$BIN" --model "$m" "${kind[@]}" --batch "$BATCH" --steps "$s" --warmup "$w" --json
  run_measured "pytorch-$f" "$PY" "$ROOT/bench/pytorch_step.py" --model "$m" "${kind[@]}" --batch "$BATCH" \
    --steps "$s" --warmup "$w" --threads "$THREADS" --flops --json
done
HVP_MODELS=""
if [ "${HVP:-1}" != "0" ]; then
  for m in $MODELS; do
    case "$m" in
      mlp) hs="${HVP_STEPS:-20}" ;; lenet5) hs="${HVP_STEPS:-10}" ;; resnet20) hs="${HVP_STEPS:-3}" ;; *) continue ;;
    esac
    HVP_MODELS="$HVP_MODELS $m"
    echo "compare.sh: $m Hessian-vector product (${HVP_WARMUP:-1} warm-up + $hs timed)" >&2
    run_measured "hvp-$m" "$BIN" --model "$m" --batch "$BATCH" --steps "$hs" --warmup "${HVP_WARMUP:-1}" --hvp --json
    run_measured "pytorch-hvp-$m" "$PY" "$ROOT/bench/pytorch_step.py" --model "$m" --batch "$BATCH" --steps "$hs" \
      --warmup "${HVP_WARMUP:-1}" --threads "$THREADS" --hvp --flops --json
  done
fi
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- table ----------------------------------------------------------------------------------
CPU="$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)"
CORES="$(nproc)"
TORCH="$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo '?')"
RUSTC="$(rustc --version)"
CANDLE="$(awk '/^name = "candle-core"$/ {getline; gsub(/"/, "", $3); print $3; exit}' Cargo.lock)"
COMMIT="${SECATEUR_LABEL:-$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' + uncommitted changes')}"

OUT_DIR="$OUT_DIR" MODELS="$ROWS" HVP_MODELS="$HVP_MODELS" python3 - <<'EOF'
import json, os
out = os.environ["OUT_DIR"]

def fname(row):
    return row.replace("+", "_").replace(":", "_")

def label(row):
    # "lenet5+sparse-vd:local" → "lenet5, sparse-vd (local)"
    if "+" not in row:
        return row
    m, k = row.split("+", 1)
    kind, est = k.split(":", 1)
    return f"{m}, {kind} ({est})"

def load(side, m):
    try:
        with open(os.path.join(out, f"{side}-{fname(m)}.json")) as f:
            lines = [l for l in f.read().splitlines() if l.strip().startswith("{")]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None

def background(name):
    try:
        with open(os.path.join(out, f"{fname(name)}.bg")) as f:
            return float(f.read().strip())
    except (OSError, ValueError):
        return 0.0

def ok(r):
    return r is not None and r.get("supported", True) and "median_ms" in r

def fmt(v, nd=1):
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.{max(nd, 2)}f}"

gemm = load("gemm", "rate")
rate = gemm.get("gflops") if gemm else None
print("| model | params | secateur ms/step | PyTorch ms/step | ratio | floor ms | secateur / floor | PyTorch / floor | p90 / median, secateur | p90 / median, PyTorch | secateur peak MiB | PyTorch peak MiB | ratio |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
notes = []
for m in os.environ["MODELS"].split():
    s, p = load("secateur", m), load("pytorch", m)
    sp = s.get("params") if ok(s) else None
    pp = p.get("params") if ok(p) else None
    if sp is not None and pp is not None and sp != pp:
        notes.append(f"{m}: parameter counts differ (secateur {sp}, PyTorch {pp})")
    params = f"{pp if pp is not None else sp:,}" if (pp or sp) else "?"
    st = fmt(s["median_ms"]) if ok(s) else "n/a"
    pt = fmt(p["median_ms"]) if ok(p) else "n/a"
    tr = f"{s['median_ms'] / p['median_ms']:.2f}×" if ok(s) and ok(p) else "n/a"
    sm = f"{s['peak_rss_mib']:.0f}" if ok(s) else "n/a"
    pm = f"{p['peak_rss_mib']:.0f}" if ok(p) else "n/a"
    mr = f"{s['peak_rss_mib'] / p['peak_rss_mib']:.2f}×" if ok(s) and ok(p) else "n/a"
    flops = p.get("flops_per_step") if ok(p) else None
    floor = flops / (rate * 1e9) * 1e3 if flops and rate else None
    fl = fmt(floor) if floor else "n/a"
    sf = f"{s['median_ms'] / floor:.2f}×" if floor and ok(s) else "n/a"
    pf = f"{p['median_ms'] / floor:.2f}×" if floor and ok(p) else "n/a"
    sv = f"{s['p90_ms'] / s['median_ms']:.2f}" if ok(s) and "p90_ms" in s else "n/a"
    pv = f"{p['p90_ms'] / p['median_ms']:.2f}" if ok(p) and "p90_ms" in p else "n/a"
    print(f"| {label(m)} | {params} | {st} | {pt} | {tr} | {fl} | {sf} | {pf} | {sv} | {pv} | {sm} | {pm} | {mr} |")
    for side, r in (("secateur", s), ("PyTorch", p)):
        bg = background(f"{side.lower()}-{m}")
        if bg > 0.1:
            notes.append(f"{m}: other processes kept {bg:.2f} of {os.cpu_count()} cores busy during the {side} run")
        if r is None:
            notes.append(f"{m}: no result from {side} (see {side.lower()}-{m}.err)")
        elif not ok(r):
            notes.append(f"{m}: {side}: {r.get('error', 'not supported')}")
print()
if rate:
    print(f"Floor = the step's floating-point operations (torch.utils.flop_counter on the PyTorch side: matrix")
    print(f"products and convolutions, forward and backward) at this host's matrix-product rate, {rate:.0f} GFLOP/s")
    print(f"(PyTorch, 2048³ f32, the same threads). p90 / median: the spread of the step times.")
    print()
print("Memory growth above the process's resident size after start-up (PyTorch's import alone is")
print("several hundred MiB, so peak RSS mostly compares library footprints):")
print()
print("| model | secateur peak − start MiB | PyTorch peak − start MiB |")
print("|---|---:|---:|")
for m in os.environ["MODELS"].split():
    s, p = load("secateur", m), load("pytorch", m)
    sd = f"{s['peak_rss_mib'] - s['base_rss_mib']:.0f}" if ok(s) else "n/a"
    pd = f"{p['peak_rss_mib'] - p['base_rss_mib']:.0f}" if ok(p) else "n/a"
    print(f"| {label(m)} | {sd} | {pd} |")
hvp_models = os.environ.get("HVP_MODELS", "").split()
if hvp_models:
    print()
    print("Hessian-vector product by double backprop, Rademacher v, on both sides (PyTorch:")
    print("`torch.autograd.grad` with `create_graph=True`); secateur's is checked against a central")
    print("difference of gradients in f64, batch 8, smallest error over steps 1e-6, 1e-8, 1e-10. Each")
    print("cell is secateur / PyTorch. The FLOP floors are the HVP's and the probe's FLOPs over a")
    print("gradient's (torch.utils.flop_counter: matrix products and convolutions), the least ratio")
    print("double backprop can reach if it runs at the gradient's FLOP rate:")
    print()
    print("| model | gradient ms | HVP ms | HVP / gradient | FLOP floor | probe ms | probe / gradient | FLOP floor | rel. error vs finite differences |")
    print("|---|---|---|---|---:|---|---|---:|---:|")
    for m in hvp_models:
        r, q = load("hvp", m), load("pytorch-hvp", m)
        for tag in (f"hvp-{m}", f"pytorch-hvp-{m}"):
            bg = background(tag)
            if bg > 0.1:
                notes.append(f"{tag}: other processes kept {bg:.2f} of {os.cpu_count()} cores busy during the run")
        if r is None or "hvp_median_ms" not in r:
            err = (r or {}).get("error", "no result")
            print(f"| {m} | n/a | n/a | n/a | n/a | n/a | {str(err).splitlines()[0] if err else 'n/a'} |")
            continue
        if r.get("hvp_error"):
            print(f"| {m} | {fmt(r['grad_median_ms'])} | failed | n/a | n/a | n/a | {r['hvp_error'].splitlines()[0]} |")
            continue

        def pair(key, ratio=False):
            a = f"{r[key]:.2f}×" if ratio else fmt(r[key])
            if q is None or key not in q:
                return f"{a} / n/a"
            return f"{a} / {q[key]:.2f}×" if ratio else f"{a} / {fmt(q[key])}"

        def floor(key):
            if q is None or not q.get(key) or not q.get("grad_flops"):
                return "n/a"
            return f"{q[key] / q['grad_flops']:.2f}×"

        print(f"| {m} | {pair('grad_median_ms')} | {pair('hvp_median_ms')} | {pair('hvp_over_grad', True)} | "
              f"{floor('hvp_flops')} | {pair('probe_median_ms')} | {pair('probe_over_grad', True)} | "
              f"{floor('probe_flops')} | {r['hvp_fd_rel_err']:.1e} |")
if notes:
    print()
    for n in notes:
        print(f"- {n}")
EOF

cat <<EOF

Median of the timed steps; batch $BATCH, f32, $THREADS threads (RAYON/OMP/MKL_NUM_THREADS=$THREADS,
torch.set_num_threads($THREADS)); ratio = secateur / PyTorch; peak = process peak RSS
(VmHWM / ru_maxrss). Steps per model: $(for m in $ROWS; do printf '%s %s+%s, ' "$m" "$(warmup_for "${m%%+*}")" "$(steps_for "${m%%+*}")"; done | sed 's/, $//') (warm-up+timed).

- CPU: $CPU, $CORES cores
- torch $TORCH; $RUSTC; candle-core $CANDLE; secateur $COMMIT
- load average before / after: $LOAD_BEFORE / $LOAD_AFTER
- raw results: ${OUT_DIR#"$ROOT"/}
EOF
