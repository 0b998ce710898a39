#!/usr/bin/env bash
# Checks the few-ulp activations of csrc/common.cuh on the CPU (no GPU needed): builds
# scripts/activation_emu.cpp, which includes common.cuh, and runs it. Needs g++ and cuda_bf16.h
# (CUDA_HOME/include). CI runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
inc="${CUDA_HOME:-/usr/local/cuda}/include"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
g++ -std=c++20 -O2 -ffp-contract=off -pthread -Icsrc -Iscripts -I"$inc" scripts/activation_emu.cpp -o "$tmp/emu"
"$tmp/emu"
