#!/usr/bin/env python3
"""Benchmark HF transformers on a Zamba checkpoint (bf16, eager attention).

Measures, on the GPU this runs on:
  * prefill throughput (tokens/s) for each --prompt-lens entry: a cached forward of a random prompt
    (use_cache=True, logits_to_keep=1, i.e. what generate() does), one warm-up then the median of
    --repeats runs (default 3), torch.cuda.synchronize() around each;
  * decode ms/step for each --decode-batches entry (default 1) after a --decode-ctx token prompt
    per sequence: a manual greedy loop with HF's cache, --decode-steps timed 1-token steps (after a
    short warm-up), median and mean; the prompt's prefill before the timed steps is timed once too
    (one run, no median: the batched prefill figure);
  * GPU memory: after loading, and the peak (torch.cuda.max_memory_allocated) of each phase.

HF runs its torch fallback for the mamba mixer when mamba-ssm / causal-conv1d are not installed
(the script prints which), so these numbers are for that path.

Prints a markdown table; --json also writes the figures.

Usage:
  python3 scripts/hf_bench.py --model /data/zamba-rand-7b
  python3 scripts/hf_bench.py --model DIR --prompt-lens 512,2048 --decode-ctx 512 --decode-steps 32 --json hf.json
  python3 scripts/hf_bench.py --model DIR --decode-batches 1,64 --decode-steps 16 --repeats 1
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def die(msg):
    print(f"ERROR: {msg}", file=sys.stderr)
    sys.exit(1)


def median(xs):
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def gib(n):
    return n / 2**30


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HF checkpoint folder")
    ap.add_argument("--prompt-lens", default="512,2048", help="comma-separated prefill lengths")
    ap.add_argument("--decode-ctx", type=int, default=512, help="prompt length before the decode steps")
    ap.add_argument("--decode-steps", type=int, default=32)
    ap.add_argument("--decode-batches", default="1", help="comma-separated decode batch sizes")
    ap.add_argument("--repeats", type=int, default=3, help="timed prefill runs per length (median reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()
    try:
        lens = [int(x) for x in args.prompt_lens.split(",") if x.strip()]
    except ValueError:
        die(f"--prompt-lens must be comma-separated integers, got {args.prompt_lens!r}")
    if not lens or min(lens) < 1:
        die("--prompt-lens needs at least one positive length")
    try:
        batches = [int(x) for x in args.decode_batches.split(",") if x.strip()]
    except ValueError:
        die(f"--decode-batches must be comma-separated integers, got {args.decode_batches!r}")
    if not batches or min(batches) < 1:
        die("--decode-batches needs at least one positive batch size")
    if args.decode_ctx < 1 or args.decode_steps < 1 or args.repeats < 1:
        die("--decode-ctx, --decode-steps and --repeats must be >= 1")
    if not os.path.isfile(os.path.join(args.model, "config.json")):
        die(f"{args.model}: no config.json (not a HF checkpoint folder?)")

    import importlib.util

    import torch
    import transformers
    from transformers import ZambaForCausalLM

    if not torch.cuda.is_available():
        die("CUDA is not available")
    torch.manual_seed(args.seed)
    dev = torch.device("cuda")
    kernels = {m: importlib.util.find_spec(m) is not None for m in ("mamba_ssm", "causal_conv1d")}
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, GPU {torch.cuda.get_device_name()}, "
          f"mamba kernels installed: {kernels}")

    def sync():
        torch.cuda.synchronize()

    t0 = time.time()
    kw = dict(dtype=torch.bfloat16, attn_implementation="eager", local_files_only=True)
    try:
        model = ZambaForCausalLM.from_pretrained(args.model, device_map="cuda", **kw)
    except (ImportError, ValueError) as e:
        if "accelerate" not in str(e):
            raise
        print(f"  note: device_map='cuda' unavailable ({e}); loading on the CPU and moving to cuda")
        model = ZambaForCausalLM.from_pretrained(args.model, **kw).to(dev)
    model.eval()
    model.generation_config.eos_token_id = None
    sync()
    cfg = model.config
    vocab = cfg.vocab_size
    n_params = sum(p.numel() for p in model.parameters())
    mem_loaded = torch.cuda.memory_allocated()
    print(f"loaded in {time.time() - t0:.1f} s: {n_params:,} params, layers {cfg.num_hidden_layers}, "
          f"{gib(mem_loaded):.2f} GiB allocated")

    g = torch.Generator(device="cpu").manual_seed(args.seed)

    def prompt(n, batch=1):
        ids = torch.randint(3, vocab, (batch, n), generator=g, dtype=torch.int64)
        ids[:, 0] = 1
        return ids.to(dev)

    results = {
        "model": os.path.abspath(args.model),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(),
        "attn_implementation": "eager",
        "dtype": "bfloat16",
        "mamba_kernels_installed": kernels,
        "params": n_params,
        "mem_after_load_gib": gib(mem_loaded),
        "prefill": [],
        "decode": [],
    }

    with torch.no_grad():
        # prefill
        for n in lens:
            ids = prompt(n)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            times = []
            for r in range(args.repeats + 1):  # run 0 is the warm-up
                sync()
                t0 = time.perf_counter()
                out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
                sync()
                dt = time.perf_counter() - t0
                del out
                if r > 0:
                    times.append(dt)
            med = median(times)
            peak = torch.cuda.max_memory_allocated()
            row = {"prompt_len": n, "batch": 1, "median_s": med, "tokens_per_s": n / med, "runs_s": times, "peak_gib": gib(peak)}
            results["prefill"].append(row)
            print(f"prefill {n:6d}: {med * 1e3:9.1f} ms  {n / med:10.1f} tok/s   peak {gib(peak):.2f} GiB")

        # decode, per batch size
        def run_decode(ids, steps):
            sync()
            t0 = time.perf_counter()
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            tok = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
            sync()
            prefill_s = time.perf_counter() - t0
            pkv = out.past_key_values
            if pkv is None:
                die("model returned no past_key_values with use_cache=True")
            del out
            ms = []
            for _ in range(steps):
                sync()
                t0 = time.perf_counter()
                out = model(input_ids=tok, past_key_values=pkv, use_cache=True, logits_to_keep=1)
                tok = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
                sync()
                ms.append((time.perf_counter() - t0) * 1e3)
                pkv = out.past_key_values
                del out
            del pkv
            return prefill_s, ms

        for b in batches:
            ids = prompt(args.decode_ctx, b)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            run_decode(ids, min(4, args.decode_steps))  # warm-up
            prefill_s, ms = run_decode(ids, args.decode_steps)
            peak = torch.cuda.max_memory_allocated()
            dmed = median(ms)
            dmean = sum(ms) / len(ms)
            results["decode"].append({
                "batch": b,
                "ctx": args.decode_ctx,
                "steps": args.decode_steps,
                "median_ms_per_token": dmed,
                "mean_ms_per_token": dmean,
                "tokens_per_s": b * 1e3 / dmed,
                "steps_ms": ms,
                "prefill_s": prefill_s,
                "prefill_tokens_per_s": b * args.decode_ctx / prefill_s,
                "peak_gib": gib(peak),
            })
            print(f"decode batch {b} after {args.decode_ctx}: {dmed:.2f} ms/step median, {dmean:.2f} mean "
                  f"({b * 1e3 / dmed:.1f} tok/s); its prefill {prefill_s * 1e3:.1f} ms; peak {gib(peak):.2f} GiB")

    dev_name = results["device"]
    print()
    print(f"HF transformers {results['transformers']} bf16, eager attention, {dev_name}")
    print()
    print("| measurement | value | peak GPU memory |")
    print("|---|---|---|")
    print(f"| weights loaded | {n_params / 1e9:.3f} B params | {gib(mem_loaded):.2f} GiB |")
    for row in results["prefill"]:
        print(f"| prefill {row['prompt_len']} tokens | {row['tokens_per_s']:.1f} tok/s "
              f"({row['median_s'] * 1e3:.1f} ms, median of {args.repeats}) | {row['peak_gib']:.2f} GiB |")
    for d in results["decode"]:
        print(f"| decode batch {d['batch']} @ ctx {d['ctx']} | {d['median_ms_per_token']:.2f} ms/step "
              f"({d['tokens_per_s']:.1f} tok/s; mean {d['mean_ms_per_token']:.2f}) | {d['peak_gib']:.2f} GiB |")
        if d["batch"] > 1:
            print(f"| prefill batch {d['batch']} x {d['ctx']} tokens | {d['prefill_tokens_per_s']:.1f} tok/s "
                  f"({d['prefill_s'] * 1e3:.1f} ms, 1 run) | {d['peak_gib']:.2f} GiB |")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
