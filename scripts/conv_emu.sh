#!/usr/bin/env bash
# Checks csrc/conv.cu's conv1d_prefill kernels on the CPU (no GPU needed): builds
# scripts/conv_emu.cpp, which includes the kernel source, with AddressSanitizer and runs it.
# Needs g++ and cuda_bf16.h (CUDA_HOME/include).
set -euo pipefail
cd "$(dirname "$0")/.."
inc="${CUDA_HOME:-/usr/local/cuda}/include"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
g++ -std=c++20 -O1 -g -ffp-contract=off -fsanitize=address,undefined -fno-sanitize-recover=undefined -pthread \
    -Icsrc -Iscripts -I"$inc" scripts/conv_emu.cpp -o "$tmp/emu"
"$tmp/emu" "$@"
