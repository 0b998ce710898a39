#!/usr/bin/env bash
# Checks csrc/gemv.cu's gemv_pipe on the CPU (no GPU needed): builds scripts/gemv_pipe_emu.cpp
# against the kernel source and runs it. Needs g++ (C++20) and cuda_bf16.h (CUDA_HOME/include).
# `bash scripts/gemv_pipe_emu.sh big` adds in_proj, down and lm_head (slow: minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
inc="${CUDA_HOME:-/usr/local/cuda}/include"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The dynamic shared arrays become the emulator's buffer; everything else compiles as is.
sed 's/extern __shared__ uint4 \(\w*\)\[\];/uint4* \1 = g_dyn_smem;/' csrc/gemv.cu >"$tmp/gemv_pipe_emu_src.cu"
cp csrc/common.cuh scripts/cuda_emu.h "$tmp/"
g++ -std=c++20 -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined -pthread \
    -I"$tmp" -I"$inc" scripts/gemv_pipe_emu.cpp -o "$tmp/emu"
"$tmp/emu" "$@"
