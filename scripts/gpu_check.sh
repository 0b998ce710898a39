#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, after scripts/build_gpu_bundle.sh has put
# the binaries in .gpu/bin: every test binary (kernels at the 7B sizes, the whole model on the
# golden fixture), then a short benchmark at the 7B shape with random weights.
# With `hf`: makes a random checkpoint with Zamba-7B-v1's exact config, runs HF transformers on it
# (fp32 and bf16) and compares our engine's logits (a 300-token prefill, then 32 decode steps).
# With `vs-hf` (not part of `all`): scripts/bench_vs_hf.sh, our bench and HF's on the same shapes
# on that checkpoint, one table in $OUT/bench_vs_hf.md.
# Logs go to $OUT (or ./gpu-out). Usage: bash scripts/gpu_check.sh [tests|bench|gemv|ab|profile|profile-prefill (PREFILL_LEN=512)|profile-b64|racecheck|sanitize|criterion|hf|vs-hf|envs|gemm-lt|all]...
set -uo pipefail
what=" ${*:-all} "
has() { [[ $what == *" $1 "* || $what == *" all "* ]]; }
export PYTHONUNBUFFERED=1
export ZAMBA_RUN_BIN=$PWD/.gpu/bin/zamba-run
out=${OUT:-gpu-out}
# build_gpu_bundle.sh ships the binaries as .gpu/bin.tar.xz (the carry limit is 64 MiB).
if [[ -f .gpu/bin.tar.xz ]]; then rm -rf .gpu/bin && tar -xJf .gpu/bin.tar.xz -C .gpu; fi
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$out/gpu.txt"
status=0
if has tests; then
  for t in .gpu/bin/test-*; do
    echo "=== $t"
    "$t" --test-threads=1 2>&1 | tee -a "$out/tests.log" | grep -E "test |result|panicked|max abs|agreement|vs" || true
    [[ ${PIPESTATUS[0]} == 0 ]] || status=1
  done
fi
if has bench; then
  # The last one: context 4096 with the prompt prefilled in pieces of 512 (the memory figure).
  for args in "-p 512 -n 64 -b 1" "-p 2048 -n 16 -b 1" "-p 4000 -n 32 -b 1" "-p 512 -n 32 -b 64" \
      "-p 4000 -n 95 -b 1 --max-tokens 512 --reps 1"; do
    echo "=== zamba-run bench --random $args"
    .gpu/bin/zamba-run bench --random $args 2>&1 | tee -a "$out/bench.log"
  done
fi
if has gemv; then
  # Every decode GEMM shape, cuBLAS against csrc/gemv.cu (gemv_m1/m8, and gemv_pipe at 1 row), at
  # 1 and 4 activation rows.
  for b in 1 4; do
    echo "=== zamba-run bench --gemv-ab -b $b"
    .gpu/bin/zamba-run bench --gemv-ab -b $b 2>&1 | tee -a "$out/gemv.log"
  done
fi
if has ab; then
  # Decode routes (same binary, same run): default (graph + our single-row GEMV), cuBLAS for
  # every GEMM, the persistent pipelined GEMV (gemv_pipe) for every single-row GEMM, no CUDA graph.
  for env in "ZAMBA_GEMV=default" "ZAMBA_GEMV=0" "ZAMBA_GEMV=pipe" "ZAMBA_GRAPH=0"; do
    echo "=== $env zamba-run bench --random -p 512 -n 64"
    env $env .gpu/bin/zamba-run bench --random -p 512 -n 64 2>&1 | tee -a "$out/bench.log"
  done
fi
if [[ $what == *" envs "* ]]; then
  # Environment A/B in one binary (not part of `all`): AB_ENVS lists settings separated by ';'
  # (each may hold several VAR=value words), AB_ARGS the bench arguments (default -p 512 -n 64).
  IFS=';' read -ra settings <<< "${AB_ENVS:-ZAMBA_GEMV=default}"
  for env in "${settings[@]}"; do
    echo "=== $env zamba-run bench --random ${AB_ARGS:--p 512 -n 64}"
    env $env .gpu/bin/zamba-run bench --random ${AB_ARGS:--p 512 -n 64} 2>&1 | tee -a "$out/envs.log"
  done
fi
if [[ $what == *" gemm-lt "* ]]; then
  # Each decode GEMM shape at 64, 16 and 1 rows through cublasGemmEx and every algorithm of
  # cuBLASLt's heuristic (not part of `all`).
  for b in 64 16 1; do
    echo "=== zamba-run bench --gemm-lt -b $b"
    .gpu/bin/zamba-run bench --gemm-lt -b $b 2>&1 | tee -a "$out/gemm_lt.log" | grep -E "^\| [a-z]" || true
  done
fi
if has profile; then
  # Kernel durations of decode steps replayed from the CUDA graph (ncu profiles each graph node
  # alone: no launch gaps, caches not flushed), on a 6-layer model at the 7B widths.
  echo "=== ncu: decode steps at batch 1 (6 layers: 5 Mamba + 1 hybrid)"
  ncu --graph-profiling node --cache-control none --clock-control none --metrics gpu__time_duration.sum \
      --csv .gpu/bin/zamba-run bench --random --layers 6 -p 8 -n 3 --reps 1 2>/dev/null \
      > "$out/ncu.csv"
  python3 scripts/kernel_summary.py < "$out/ncu.csv"
fi
if has profile-prefill; then
  plen=${PREFILL_LEN:-512}
  echo "=== ncu: a $plen-token prefill (6 layers: 5 Mamba + 1 hybrid), twice"
  ncu --cache-control none --clock-control none --metrics gpu__time_duration.sum \
      --csv .gpu/bin/zamba-run bench --random --layers 6 -p $plen -n 1 --reps 1 2>/dev/null \
      > "$out/ncu-prefill.csv"
  python3 scripts/kernel_summary.py < "$out/ncu-prefill.csv"
fi
if has profile-b64; then
  echo "=== ncu: decode steps at batch 64, context 512 (6 layers: 5 Mamba + 1 hybrid)"
  ncu --graph-profiling node --cache-control none --clock-control none --metrics gpu__time_duration.sum \
      --csv .gpu/bin/zamba-run bench --random --layers 6 -p 512 -n 3 -b 64 --reps 1 2>/dev/null \
      > "$out/ncu-b64.csv"
  python3 scripts/kernel_summary.py < "$out/ncu-b64.csv"
fi
if has racecheck; then
  # Shared-memory races and barrier misuse in the flash attention kernels: one whole-model test
  # (tiny-a: a batched prefill, then decoding) with 64-key tiles, then with 32-key tiles
  # (ZAMBA_FLASH=k32); then the wgmma kernel (head_dim 464 only) on the attention test's forced
  # wgmma cases. racecheck over all of test-gpu_model took 294 s on the H200.
  for tool in racecheck synccheck; do
    for k in k64 k32; do
      echo "=== compute-sanitizer $tool, ZAMBA_FLASH=$k"
      ZAMBA_FLASH=$k timeout 240 compute-sanitizer --tool $tool --error-exitcode 9 .gpu/bin/test-gpu_model \
          --test-threads=1 --exact decode_after_prefill_and_chunked_prefill_match_one_prefill >"$out/$tool-$k.log" 2>&1
      [[ $? == 0 ]] || status=1
      grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test result|hazard" "$out/$tool-$k.log" | head -10
    done
    echo "=== compute-sanitizer $tool, the wgmma flash kernel"
    timeout 300 compute-sanitizer --tool $tool --error-exitcode 9 .gpu/bin/test-gpu_kernels_attention \
        --test-threads=1 --exact attention_prefill_wgmma >"$out/$tool-wgmma.log" 2>&1
    [[ $? == 0 ]] || status=1
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test result|hazard" "$out/$tool-wgmma.log" | head -10
  done
fi
if has sanitize; then
  echo "=== compute-sanitizer memcheck on the whole-model tests (tiny-a)"
  for t in gpu_model gpu_decode_step; do
    compute-sanitizer --tool memcheck --error-exitcode 9 .gpu/bin/test-$t --test-threads=1 --skip zamba_7b \
        2>&1 | tee -a "$out/sanitize.log" | grep -E "ERROR SUMMARY|test result|Invalid|out of bounds" | head -20
    [[ ${PIPESTATUS[0]} == 0 ]] || status=1
  done
  echo "=== compute-sanitizer memcheck on the wgmma flash kernel (head_dim 464)"
  compute-sanitizer --tool memcheck --error-exitcode 9 .gpu/bin/test-gpu_kernels_attention --test-threads=1 \
      --exact attention_prefill_wgmma 2>&1 | tee -a "$out/sanitize.log" | grep -E "ERROR SUMMARY|test result|Invalid" | head -20
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
fi
if has criterion && [[ -x .gpu/bin/bench-throughput ]]; then
  echo "=== cargo bench (criterion)"
  .gpu/bin/bench-throughput --bench 2>&1 | tee "$out/criterion.log" | grep -E "^[a-z_0-9/]+ *$|time:|thrpt:" | head -40
fi
if has hf; then
  ck=/tmp/zamba-rand-7b
  ref=/tmp/hf-ref.safetensors
  ours=/tmp/ours.safetensors
  echo "=== random Zamba-7B-v1 checkpoint"
  python3 scripts/make_random_checkpoint.py --out $ck --branch-scale 0.3 --overwrite \
      --tokenizer assets/zamba-7b-v1/tokenizer.json 2>&1 | tail -5 | tee -a "$out/hf.log"
  echo "=== HF transformers fp32 and bf16"
  python3 scripts/hf_reference.py --model $ck --out $ref --prompt-len 300 --new 32 2>&1 | tail -12 | tee -a "$out/hf.log"
  echo "=== zamba-run logits (prefill 300, then 32 decode steps)"
  .gpu/bin/zamba-run logits --device cuda --model $ck --input $ref --key generated_ids --out $ours --prefill 300 2>&1 | tee -a "$out/hf.log"
  python3 scripts/compare_logits.py $ref $ours --prompt-len 300 --json "$out/compare.json" 2>&1 | tee -a "$out/hf.log"
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
  echo "=== zamba-run bench on the checkpoint (load from the page cache)"
  .gpu/bin/zamba-run bench --model $ck -p 512 -n 32 --reps 1 2>&1 | tee -a "$out/hf.log"
fi
if [[ $what == *" vs-hf "* ]]; then
  OUT=$out bash scripts/bench_vs_hf.sh || status=1
fi
exit $status
