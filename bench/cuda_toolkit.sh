#!/usr/bin/env bash
# A CUDA 13.0 build environment from PyPI wheels, for building `--features cuda` binaries on a
# machine without a GPU or a system CUDA toolkit (then run them with bench/cuda_device.sh on a
# GPU machine that has the driver and the CUDA 13 libraries).
#
#   bench/cuda_toolkit.sh [DIR]          # default DIR=/opt/cudapip; prints the env file to source
#   source DIR/env.sh
#   cargo test --release -p secateur-kernels --features cuda --test cuda_parity --no-run
#   cargo build --release -p secateur-experiments --features cuda --bin bench_step
#
# Fetches nvcc, nvvm (cicc), the CUDA runtime, CCCL headers, cuBLAS, cuRAND and NVRTC wheels
# (about 700 MB), lays them out as CUDA_ROOT with lib64 symlinks, and builds a stub libcuda.so
# (soname libcuda.so.1) exporting every driver function cudarc binds, only for linking: at run
# time the driver's own libcuda.so.1 is loaded. candle-kernels compiles its PTX for
# CUDA_COMPUTE_CAP (90: Hopper); the first build takes several minutes on two cores.
set -euo pipefail
DIR="${1:-/opt/cudapip}"
mkdir -p "$DIR/whl" "$DIR/x"
cd "$DIR"
python3 -m pip download --quiet --no-deps -d whl \
  "nvidia-cuda-nvcc==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-runtime==13.0.*" \
  "nvidia-cuda-crt==13.0.*" "nvidia-cuda-cccl==13.0.*" "nvidia-cublas==13.*" \
  "nvidia-curand==10.*" "nvidia-cuda-nvrtc==13.0.*"
for f in whl/*.whl; do unzip -q -o "$f" -d x; done
R="$DIR/x/nvidia/cu13"
mkdir -p "$R/lib64" "$R/stub"
for f in "$R"/lib/*.so.*; do
  b=$(basename "$f"); base=${b%%.so.*}
  ln -sf "$f" "$R/lib64/$b"
  [ -e "$R/lib64/$base.so" ] || ln -sf "$f" "$R/lib64/$base.so"
done
# The driver functions cudarc declares (its sys bindings), as stubs for the linker.
SYS=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-*/src/driver/sys/mod.rs | tail -1)
grep -ohE "pub unsafe fn cu[A-Za-z0-9_]+" "$SYS" | sed 's/pub unsafe fn //' | sort -u |
  sed 's/.*/int &(void){return 999;}/' >"$R/stub/cuda_stub.c"
cc -shared -fPIC -o "$R/stub/libcuda.so" -Wl,-soname,libcuda.so.1 "$R/stub/cuda_stub.c"
ln -sf "$R/stub/libcuda.so" "$R/lib64/libcuda.so"
cat >"$DIR/env.sh" <<EOF
export CUDA_ROOT=$R
export CUDA_HOME=$R
export PATH=$R/bin:\$PATH
export LIBRARY_PATH=$R/lib64
export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=\${CARGO_TARGET_DIR:-target-cuda}
EOF
"$R/bin/nvcc" --version | tail -1
echo "source $DIR/env.sh"
