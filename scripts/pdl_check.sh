#!/usr/bin/env bash
# Checks that no kernel launched with programmatic dependent launch (PDL_KERNELS in
# src/gpu/device.rs) reads through the non-coherent path (LDG...CONSTANT, i.e. ld.global.nc from
# __ldg or a const __restrict__ pointer): that path is outside what griddepcontrol.wait orders,
# and it once made the 7B decode read stale activations (csrc/common.cuh). Compiles csrc/ for
# sm_90a (what the engine's fatbin runs on the H100/H200) with $NVCC and reads the machine code
# with cuobjdump (installed from PyPI into the CI cache when missing). Only the loads listed in
# ALLOWED (constant weights) may use that path.
# CI runs it; needs NVCC (and CUDA_HOME/include for the headers nvcc uses).
set -euo pipefail
cd "$(dirname "$0")/.."
# kernel=count: nc loads of constant data the kernel may keep.
ALLOWED="ssm_decode_dt=1"   # its dt_proj weight row
tools="${XDG_CACHE_HOME:-$HOME/.cache}/zamba-ci/cuobjdump-13.2"
cuobjdump="$tools/nvidia/cu13/bin/cuobjdump"
if ! "$cuobjdump" --version >/dev/null 2>&1; then
  echo "installing cuobjdump 13.2 from PyPI into $tools"
  rm -rf "$tools" && mkdir -p "$tools"
  python3 -m pip install --quiet --disable-pip-version-check --target "$tools" \
    nvidia-cuda-cuobjdump==13.2.51 nvidia-cuda-nvdisasm==13.2.51
  chmod +x "$tools"/nvidia/cu13/bin/*
fi
export PATH="$tools/nvidia/cu13/bin:$PATH"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
kernels=$(sed -n '/^const PDL_KERNELS/,/^];/p' src/gpu/device.rs | grep -o '"[a-z0-9_]*"' | tr -d '"')
[[ -n $kernels ]] || { echo "no PDL_KERNELS found in src/gpu/device.rs"; exit 1; }
for f in csrc/*.cu; do
  "$NVCC" -arch=sm_90a -O3 -cubin -Icsrc "$f" -o "$tmp/$(basename "$f" .cu).cubin"
done
for c in "$tmp"/*.cubin; do cuobjdump -sass "$c"; done \
  | awk '/Function :/ {fn = $3; seen[fn] = 1} /LDG[^;]*CONSTANT/ {nc[fn]++} END {for (k in seen) print k, nc[k] + 0}' \
  > "$tmp/nc.txt"
status=0
for k in $kernels; do
  line=$(grep -E "^$k " "$tmp/nc.txt" || true)
  [[ -n $line ]] || { echo "FAIL $k: not found in the compiled kernels"; status=1; continue; }
  n=${line#* }
  allowed=$(tr ' ' '\n' <<<"$ALLOWED" | sed -n "s/^$k=//p")
  if (( n > ${allowed:-0} )); then
    echo "FAIL $k: $n non-coherent loads (LDG...CONSTANT), ${allowed:-0} allowed"
    status=1
  else
    echo "ok   $k: $n non-coherent loads (${allowed:-0} allowed)"
  fi
done
exit $status
