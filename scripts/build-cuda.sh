#!/usr/bin/env bash
# Builds target/release/exo with CUDA (--features cuda) on any Linux x86-64 machine, with or without a GPU: the
# CUDA 13.0 compiler and headers come from the Python package index (scripts/cuda-env.sh installs them, pinned).
# The binary needs no CUDA library to start: it loads the NVIDIA driver and cuBLAS/cuRAND/NVRTC when it looks for
# GPUs, and without them says "no CUDA device found" and runs on the CPU. Then it checks what the binary needs:
# every library it names must be a system one, and every symbol it leaves open a CUDA one.
#
# usage: scripts/build-cuda.sh [cargo build args...]
#   CUDA_COMPUTE_CAP   GPU generation of the compiled kernels (default 80: RTX 30xx/40xx and A100; 90: H100/H200)
#   CARGO_TARGET_DIR   honoured (the binary is then $CARGO_TARGET_DIR/release/exo)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/cuda-env.sh
. ./scripts/cuda-env.sh
echo "nvcc: $(nvcc --version | tail -n 2 | head -n 1); kernels for sm_$CUDA_COMPUTE_CAP" >&2
RUSTFLAGS="${RUSTFLAGS:-} $EXO_CUDA_RUSTFLAGS" cargo build --release -p exo --features cuda "$@"
bin=${CARGO_TARGET_DIR:-target}/release/exo

# No CUDA library among those the loader must find at start...
needed=$(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
for lib in $needed; do
  case $lib in
    libc.so.* | libm.so.* | libgcc_s.so.* | libstdc++.so.* | libdl.so.* | librt.so.* | libpthread.so.* | ld-linux*) ;;
    *) echo "error: $bin needs $lib at start" >&2; exit 1 ;;
  esac
done
# ...and every function left for run time is one of the CUDA libraries' (the others are versioned system symbols).
open=$(nm -D --undefined-only "$bin" | awk '{print $2}' | grep -v '@' || true)
stray=$(grep -Ev '^(cu|nvrtc|curand|cublas)' <<<"$open" || true)
if [ -n "$stray" ]; then
  echo "error: $bin leaves symbols unresolved that no CUDA library defines:" >&2
  echo "$stray" >&2
  exit 1
fi
if readelf -d "$bin" | grep -q 'BIND_NOW\|FLAGS.*NOW'; then
  echo "error: $bin binds every symbol at start (full RELRO); the CUDA ones must bind lazily" >&2
  exit 1
fi
echo "built $bin: needs $(echo "$needed" | tr '\n' ' ')at start; $(grep -c . <<<"$open") CUDA functions bound at run time" >&2
