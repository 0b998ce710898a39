#!/usr/bin/env bash
# Checks the conv-fused batch-1 decode kernels (csrc/gemv.cu's xproj_conv_m1, csrc/scan.cu's
# ssm_decode_dt_conv) on the CPU (no GPU needed): builds scripts/decode_conv_emu.cpp against the
# kernel sources and runs it. Needs g++ (C++20) and cuda_bf16.h (CUDA_HOME/include).
set -euo pipefail
cd "$(dirname "$0")/.."
inc="${CUDA_HOME:-/usr/local/cuda}/include"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The dynamic shared arrays become the emulator's buffer; everything else compiles as is.
cat csrc/conv.cu csrc/gemv.cu csrc/scan.cu |
    sed 's/extern __shared__ uint4 \(\w*\)\[\];/uint4* \1 = g_dyn_smem;/' >"$tmp/decode_conv_emu_src.cu"
cp csrc/common.cuh scripts/cuda_emu.h "$tmp/"
g++ -std=c++20 -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined -pthread \
    -I"$tmp" -I"$inc" scripts/decode_conv_emu.cpp -o "$tmp/emu"
"$tmp/emu" "$@"
