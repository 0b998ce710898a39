#!/usr/bin/env bash
# Builds the release test binaries and zamba-run here, and copies them (stripped) into .gpu/bin,
# the folder the `device` tool carries to the GPU machine (which has no Rust).
# Usage: scripts/build_gpu_bundle.sh   (then carry ".gpu/bin.tar.xz" and run scripts/gpu_check.sh there)
set -euo pipefail
cd "$(dirname "$0")/.."
# The GPU machine needs the kernels: fail here rather than ship a build without them.
export ZAMBA_REQUIRE_CUDA=1
mkdir -p .gpu/bin
rm -f .gpu/bin/* .gpu/bin.tar.xz
cargo build --release --bin zamba-run
cp target/release/zamba-run .gpu/bin/
# `cargo test --no-run` prints the path of every test executable.
cargo test --release --no-run --message-format=json 2>/dev/null \
  | python3 -c '
import json, sys, shutil
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        name = m["target"]["name"]
        shutil.copy(m["executable"], ".gpu/bin/test-" + name)
'
# The criterion benchmark binary (run it there with --bench).
cargo bench --no-run --message-format=json 2>/dev/null \
  | python3 -c '
import json, sys, shutil
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "bench" in m["target"]["kind"]:
        shutil.copy(m["executable"], ".gpu/bin/bench-" + m["target"]["name"])
'
strip .gpu/bin/* 2>/dev/null || true
ls -la .gpu/bin
# The device tool carries at most 64 MiB with the working tree: ship the binaries compressed
# (carry ".gpu/bin.tar.xz"; scripts/gpu_check.sh unpacks it).
tar -cJf .gpu/bin.tar.xz -C .gpu bin
du -sh .gpu/bin .gpu/bin.tar.xz
