#!/usr/bin/env bash
# Checks csrc/conv_xproj.cu (the batched decode conv + x_proj and its reduction) on the CPU, no
# GPU needed: copies the kernel source next to host stand-ins for its cp.async and mma helpers
# (scripts/conv_xproj_emu_shims.h), builds scripts/conv_xproj_emu.cpp with AddressSanitizer and
# runs it. Needs g++ (C++20) and cuda_bf16.h (CUDA_HOME/include).
set -euo pipefail
cd "$(dirname "$0")/.."
inc="${CUDA_HOME:-/usr/local/cuda}/include"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp csrc/conv_xproj.cu csrc/common.cuh csrc/conv_weights.cuh "$tmp/"
echo '#include "conv_xproj_emu_shims.h"' >"$tmp/flash_common.cuh"
echo '#include "conv_xproj_emu_shims.h"' >"$tmp/mma.cuh"
g++ -std=c++20 -O1 -g -ffp-contract=off -fsanitize=address,undefined -fno-sanitize-recover=undefined -pthread \
    -I"$tmp" -Iscripts -I"$inc" scripts/conv_xproj_emu.cpp -o "$tmp/emu"
"$tmp/emu" "$@"
