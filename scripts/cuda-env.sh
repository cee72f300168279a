#!/usr/bin/env bash
# Sourced, not run: installs the CUDA 13.0 compiler and headers from the Python package index (pinned wheels, no
# system CUDA needed, no GPU needed) into $EXO_CUDA_HOME (default ~/.cache/exo/cuda-13.0) when missing, and sets
# what candle's CUDA build reads: PATH (nvcc), CUDA_HOME/CUDA_PATH, CUDA_COMPUTE_CAP, and the linker flags of a
# binary that loads the CUDA libraries at run time (see scripts/build-cuda.sh).
#
# Why 13.0: the device machines' driver is 580 (CUDA 13.0), and a driver loads PTX only up to its own ISA (nvcc 13.5
# writes ISA 9.5, 13.0 writes 9.0). nvidia-cuda-nvcc-cu12 holds only ptxas; the 13.x wheels make a whole nvcc.
#   CUDA_COMPUTE_CAP   the GPU generation the kernels are compiled for (default 80: Ampere and later of major 8,
#                      such as the RTX 3090 (8.6) and 4090 (8.9); 90 for the H100/H200)
CUDA_WHEELS=(
  "nvidia-cuda-nvcc==13.0.88"
  "nvidia-nvvm==13.0.88"
  "nvidia-cuda-crt==13.0.88"
  "nvidia-cuda-runtime==13.0.96"
  "nvidia-cuda-cccl==13.0.85"
)
EXO_CUDA_HOME=${EXO_CUDA_HOME:-$HOME/.cache/exo/cuda-13.0}
_cuda_root=$EXO_CUDA_HOME/nvidia/cu13
if [ ! -x "$_cuda_root/bin/nvcc" ] || [ "$(cat "$EXO_CUDA_HOME/wheels" 2>/dev/null)" != "${CUDA_WHEELS[*]}" ]; then
  echo "installing the CUDA 13.0 compiler from PyPI into $EXO_CUDA_HOME" >&2
  rm -rf "$EXO_CUDA_HOME"
  python3 -m pip install -q --no-deps --target "$EXO_CUDA_HOME" "${CUDA_WHEELS[@]}" >&2
  # The wheels spread one toolkit over several packages; nvcc looks for cicc and libdevice under its own root,
  # and for the headers (crt, cccl) in include/.
  ln -sfn "$_cuda_root/lib" "$_cuda_root/lib64"
  [ -d "$_cuda_root/include/cccl" ] && for d in "$_cuda_root"/include/cccl/*; do
    ln -sfn "$d" "$_cuda_root/include/$(basename "$d")"
  done
  echo "${CUDA_WHEELS[*]}" >"$EXO_CUDA_HOME/wheels"
fi
# candle links the CUDA driver (libcuda) and libraries (cuBLAS, cuRAND, NVRTC, the CUDA runtime) by name; none is
# installed on a machine without a GPU, and a binary that names them as needed does not start there. So the link
# sees empty libraries of those names (--as-needed then records none of them) and the CUDA runtime's static
# library (which loads the driver itself, when first used); the other CUDA functions stay unresolved until the
# binary loads the real libraries at run time (crates/exo-engine/src/cuda_libs.rs) and binds them lazily, which
# needs partial RELRO (full RELRO binds every function at start).
_stubs=$EXO_CUDA_HOME/link-stubs
if [ ! -f "$_stubs/libcuda.so" ]; then
  mkdir -p "$_stubs"
  : >"$_stubs/empty.c"
  for lib in cuda cudart nvrtc curand cublas cublasLt; do
    cc -shared -o "$_stubs/lib$lib.so" "$_stubs/empty.c"
  done
fi
export PATH=$_cuda_root/bin:$PATH
export CUDA_HOME=$_cuda_root CUDA_PATH=$_cuda_root CUDA_ROOT=$_cuda_root
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-80}
# candle's kernel build (cudaforge) runs nvcc on half the cores unless told; its static kernels take minutes each.
export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-$(nproc)}
export EXO_CUDA_RUSTFLAGS="-L native=$_stubs -C relro-level=partial \
  -C link-arg=-Wl,--unresolved-symbols=ignore-in-object-files \
  -C link-arg=$_cuda_root/lib/libcudart_static.a -C link-arg=-ldl -C link-arg=-lrt -C link-arg=-lpthread"
unset _cuda_root _stubs
