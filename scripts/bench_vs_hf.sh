#!/usr/bin/env bash
# Benchmarks our engine and HF transformers on the same shapes on this GPU, in one call, and writes
# one comparison table to $OUT/bench_vs_hf.md (and stdout); the raw JSON and logs go beside it.
#
# Runs on the GPU machine from the repository root, after scripts/build_gpu_bundle.sh has put
# zamba-run in .gpu/bin; needs python3 with torch and transformers. The checkpoint is
# /tmp/zamba-rand-7b (the one `gpu_check.sh hf` makes: random weights with Zamba-7B-v1's exact
# config), reused when complete, else made by scripts/make_random_checkpoint.py (a few minutes);
# or any checkpoint folder given as $CK, used as it is.
#
# Shapes (both sides): prefill 512 and 2048 tokens at batch 1; decode after a 512-token prompt at
# batch 1 and 64; the 512-token prefill at batch 64. zamba-run runs 128 decode steps at batch 1 and
# 32 at batch 64 (median of 3 reps); HF, at ~90 ms a step on its torch fallback path, runs
# $HF_STEPS steps per batch and $HF_REPEATS timed prefills per length, so that it stays under
# about 4 minutes. Env: CK, HF_STEPS (16), HF_REPEATS (1), SKIP_HF=1 (zamba only), ZAMBA_REV (the
# commit named in the table, when this copy of the tree has no .git).
# Usage: bash scripts/bench_vs_hf.sh   (or bash scripts/gpu_check.sh vs-hf)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ck=${CK:-/tmp/zamba-rand-7b}
bin=${ZAMBA_RUN_BIN:-$PWD/.gpu/bin/zamba-run}
if [[ ! -x $bin ]]; then
  echo "no $bin: run scripts/build_gpu_bundle.sh first, carry .gpu/bin.tar.xz and run this through scripts/gpu_check.sh vs-hf (which unpacks it)" >&2
  exit 1
fi
out=${OUT:-gpu-out}
mkdir -p "$out"
hf_steps=${HF_STEPS:-16}
hf_repeats=${HF_REPEATS:-1}
status=0

# A checkpoint is complete when config.json and tokenizer.json (copied last by
# make_random_checkpoint.py) are there and every shard its index names exists.
ck_complete() {
  python3 - "$1" <<'EOF'
import json, os, sys
d = sys.argv[1]
ok = all(os.path.isfile(os.path.join(d, f)) for f in ("config.json", "tokenizer.json"))
idx = os.path.join(d, "model.safetensors.index.json")
if ok and os.path.isfile(idx):
    with open(idx) as f:
        shards = [os.path.join(d, s) for s in set(json.load(f)["weight_map"].values())]
    ok = all(os.path.isfile(s) and os.path.getsize(s) > 0 for s in shards)
elif ok:
    ok = os.path.isfile(os.path.join(d, "model.safetensors"))
sys.exit(0 if ok else 1)
EOF
}

gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
rev=${ZAMBA_REV:-$(git rev-parse --short HEAD 2>/dev/null || echo "an unrecorded commit")}
what="random weights with Zamba-7B-v1's config"

if [[ -n ${CK:-} ]]; then
  # A checkpoint the caller chose is used as it is, never rewritten.
  [[ -f $ck/config.json ]] || { echo "CK=$ck: no config.json" >&2; exit 1; }
  what="given as CK"
  echo "=== checkpoint $ck"
elif ck_complete "$ck"; then
  echo "=== reusing the random Zamba-7B-v1 checkpoint in $ck"
else
  echo "=== random Zamba-7B-v1 checkpoint in $ck"
  python3 scripts/make_random_checkpoint.py --out "$ck" --branch-scale 0.3 --overwrite \
      --tokenizer assets/zamba-7b-v1/tokenizer.json 2>&1 | tail -5 | tee "$out/vs_hf_checkpoint.log"
  if ! ck_complete "$ck"; then
    echo "could not make the checkpoint (see $out/vs_hf_checkpoint.log)" >&2
    exit 1
  fi
fi

zjson=()
for args in "-p 512 -n 128 -b 1" "-p 2048 -n 16 -b 1" "-p 512 -n 32 -b 64"; do
  name="zamba_$(echo "$args" | tr -d ' -')"
  echo "=== zamba-run bench --model $ck $args --json"
  # shellcheck disable=SC2086 # $args is a list of flags
  if "$bin" bench --model "$ck" $args --json >"$out/$name.json" 2>"$out/$name.err"; then
    cat "$out/$name.json"
  else
    echo "zamba-run bench $args failed:" >&2
    tail -5 "$out/$name.err" >&2
    status=1
  fi
  zjson+=("$out/$name.json")
done

hf_json="$out/hf_bench.json"
rm -f "$hf_json"
if [[ ${SKIP_HF:-0} != 1 ]]; then
  echo "=== HF transformers (prefill 512, 2048; decode batch 1 and 64 after 512, $hf_steps steps)"
  start=$SECONDS
  python3 scripts/hf_bench.py --model "$ck" --prompt-lens 512,2048 --repeats "$hf_repeats" \
      --decode-ctx 512 --decode-steps "$hf_steps" --decode-batches 1,64 --json "$hf_json" \
      2>&1 | tee "$out/hf.log"
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
  echo "HF part took $((SECONDS - start)) s"
fi

echo "=== comparison table"
python3 scripts/bench_table.py --zamba "${zjson[@]}" --hf "$hf_json" --gpu "$gpu" --checkpoint "$ck ($what)" \
    --note "zamba at $rev; $(date -u +%Y-%m-%d)." \
    --out "$out/bench_vs_hf.md" || status=1
exit $status
