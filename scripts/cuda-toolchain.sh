#!/usr/bin/env bash
# Assemble a CUDA 13.0 toolkit from PyPI wheels, for building `--features cuda`
# on a machine without one (nvcc, headers, cuBLAS/cuRAND, and a link-time-only
# libcuda stub; the real libcuda comes from the GPU machine's driver).
#
#   scripts/cuda-toolchain.sh [VENV_DIR] [ROOT_DIR]     (defaults: .cuda/venv .cuda/root)
#   source .cuda/env.sh && cargo build --release --features cuda
#
# CUDA 13.0 kernels run on any CUDA 13 driver (>= 580). CUDA_COMPUTE_CAP=90
# targets Hopper (H100/H200); change it for other GPUs.
set -euo pipefail
V=$(realpath -m "${1:-.cuda/venv}") R=$(realpath -m "${2:-.cuda/root}")
[ -x "$V/bin/pip" ] || python3 -m venv "$V"
"$V/bin/pip" install -q nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
C=$("$V/bin/python" -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])')/nvidia/cu13
rm -rf "$R"; mkdir -p "$R/lib64/stubs"
ln -s "$C/bin" "$R/bin"; ln -s "$C/include" "$R/include"; ln -s "$C/nvvm" "$R/nvvm"; ln -s lib64 "$R/lib"
for f in "$C"/lib/*; do ln -s "$f" "$R/lib64/"; done
for n in cudart cublas cublasLt nvrtc nvvm curand; do
  ln -s "$(ls "$C"/lib/lib$n.so.* | grep -v alt | head -1)" "$R/lib64/lib$n.so"
done
# Link-time stub for libcuda.so.1: every cu* entry point of cuda.h, returning
# CUDA_ERROR_NO_DEVICE. Never put it on LD_LIBRARY_PATH at run time.
cd "$R/lib64/stubs"
{ gcc -E -P -x c "$C/include/cuda.h"; gcc -E -P -x c -DCUDA_API_PER_THREAD_DEFAULT_STREAM "$C/include/cuda.h"; } | tr -s ' \n' ' ' \
  | grep -oE '\bCUresult( CUDAAPI)? +cu[A-Za-z0-9_]+ *\(' | grep -oE 'cu[A-Za-z0-9_]+' | sort -u > syms.txt
awk '{print "int "$1"(void){return 100;}"}' syms.txt > libcuda_stub.c
gcc -shared -fPIC -w -o libcuda.so -Wl,-soname,libcuda.so.1 libcuda_stub.c; ln -sf libcuda.so libcuda.so.1
cat > "$(dirname "$R")/env.sh" <<ENV
export CUDA_ROOT=$R
export CUDA_HOME=\$CUDA_ROOT CUDA_PATH=\$CUDA_ROOT CUDA_TOOLKIT_ROOT_DIR=\$CUDA_ROOT
export NVCC=\$CUDA_ROOT/bin/nvcc
export PATH=\$CUDA_ROOT/bin:\$PATH
export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}
export CUDARC_CUDA_VERSION=13000
export LIBRARY_PATH=\$CUDA_ROOT/lib64:\$CUDA_ROOT/lib64/stubs\${LIBRARY_PATH:+:\$LIBRARY_PATH}
ENV
"$R/bin/nvcc" --version | tail -1
echo "toolkit ready: source $(dirname "$R")/env.sh"
