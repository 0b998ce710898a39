#!/usr/bin/env bash
# Checks csrc/skinny.cu's skinny_gemm on the CPU (no GPU needed): builds scripts/skinny_emu.cpp
# against the kernel source and runs it. Needs g++ (C++20) and cuda_bf16.h (CUDA_HOME/include).
set -euo pipefail
cd "$(dirname "$0")/.."
inc="${CUDA_HOME:-/usr/local/cuda}/include"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The dynamic shared array becomes the emulator's buffer; everything else compiles as is.
sed 's/extern __shared__ __align__(128) unsigned char \(\w*\)\[\];/unsigned char* \1 = reinterpret_cast<unsigned char*>(g_dyn_smem);/' \
    csrc/skinny.cu >"$tmp/skinny_emu_src.cu"
grep -q 'g_dyn_smem' "$tmp/skinny_emu_src.cu"
cp csrc/common.cuh csrc/async_copy.cuh scripts/cuda_emu.h scripts/skinny_emu_ops.h "$tmp/"
g++ -std=c++20 -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined -pthread \
    -I"$tmp" -I"$inc" scripts/skinny_emu.cpp -o "$tmp/emu"
"$tmp/emu" "$@"
