#!/usr/bin/env bash
# CUDA checks on a machine with an NVIDIA GPU (issue 3): the kernel parity tests and the
# training-step benchmark, secateur (candle's CUDA backend) beside PyTorch on the same GPU.
#
#   bench/cuda_device.sh BIN_DIR
#
# BIN_DIR holds binaries built elsewhere with `--features cuda` (the machine needs no Rust;
# bench/cuda_toolkit.sh sets up a build environment without a system CUDA toolkit):
#   cuda_parity   cargo test --release -p secateur-kernels --features cuda --test cuda_parity --no-run
#   bench_step    cargo build --release -p secateur-experiments --features cuda --bin bench_step
# They link libcuda, libcublas(Lt), libcurand and libnvrtc dynamically; the script looks for the
# CUDA 13 libraries under /usr/local/cuda and Python's nvidia packages. PyTorch must be
# importable by python3. Prints a markdown table (median ms per step, ratio secateur / PyTorch).
set -uo pipefail
BIN="${1:?usage: bench/cuda_device.sh BIN_DIR}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOG="${OUT:-/tmp}/cuda_device"
mkdir -p "$LOG"

# The driver's libcuda first (never CUDA's forward-compatibility copy in cuda/compat, which
# refuses to run beside a newer driver), then the toolkit's libraries.
libdirs=""
for lib in libcuda.so.1 libcublas.so.13 libcurand.so.10 libnvrtc.so.13; do
  d=$(find /usr/local/nvidia /usr/lib/x86_64-linux-gnu /usr/local/cuda*/ /opt /usr/local/lib \
        -name "$lib" -not -path "*/compat/*" -print -quit 2>/dev/null | xargs -r dirname)
  [ -n "$d" ] && case ":$libdirs:" in *":$d:"*) ;; *) libdirs="$libdirs:$d" ;; esac
done
export LD_LIBRARY_PATH="${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
chmod +x "$BIN"/* 2>/dev/null

echo "== kernel parity tests (CPU fast path vs candle's CUDA ops)"
(cd "$ROOT/kernels" && "$BIN/cuda_parity" --test-threads 1 2>&1) | tee "$LOG/parity.txt"

MODELS="${MODELS:-mlp lenet5 resnet20 bayes-mlp bayes-lenet5}"
STEPS="${STEPS:-200}"
WARMUP="${WARMUP:-20}"
echo "== training steps on CUDA (batch 128, f32, $STEPS timed after $WARMUP warm-up)"
: >"$LOG/bench.jsonl"
for m in $MODELS; do
  "$BIN/bench_step" --device cuda --model "$m" --steps "$STEPS" --warmup "$WARMUP" --json \
    >>"$LOG/bench.jsonl" 2>>"$LOG/bench.err"
  python3 "$ROOT/bench/pytorch_step.py" --device cuda --model "$m" --steps "$STEPS" --warmup "$WARMUP" --json \
    >>"$LOG/bench.jsonl" 2>>"$LOG/bench.err"
  "$BIN/bench_step" --device cuda --model "$m" --hvp --steps 50 --warmup 5 --json \
    >>"$LOG/bench.jsonl" 2>>"$LOG/bench.err"
done
python3 - "$LOG/bench.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
train = {(r["impl"], r["model"]): r for r in rows if r.get("mode") == "train_step"}
hvp = {r["model"]: r for r in rows if r.get("mode") == "hvp"}
gpu = next((r.get("gpu") for r in rows if r.get("gpu")), "?")
print(f"\nGPU: {gpu}\n")
print("| model | secateur ms/step | PyTorch ms/step | ratio | PyTorch peak GPU MiB | HVP / grad (secateur) | HVP FD rel. err |")
print("|---|---:|---:|---:|---:|---:|---:|")
for m in dict.fromkeys(r["model"] for r in rows):
    s, p, h = train.get(("secateur", m), {}), train.get(("pytorch", m), {}), hvp.get(m, {})
    sm, pm = s.get("median_ms", float("nan")), p.get("median_ms", float("nan"))
    err = s.get("error") or h.get("error") or h.get("hvp_error")
    print(f"| {m} | {sm:.2f} | {pm:.2f} | {sm / pm:.2f}x | {p.get('peak_gpu_alloc_mib', float('nan')):.0f} | "
          f"{h.get('hvp_over_grad', float('nan')):.2f} | {h.get('hvp_fd_rel_err', float('nan')):.1e} |" + (f" error: {err}" if err else ""))
PY
