#!/usr/bin/env python3
"""HF transformers reference outputs (logits, greedy tokens, timings) for a Zamba checkpoint.

Steps (one model load, bf16 on cuda, eager attention, HF's torch fallback for the mamba mixer):
  1. random prompt ids in [3, 32000), seeded, shape [batch, prompt_len], BOS (1) at position 0;
  2. generated_ids = model.generate(prompt, max_new_tokens=new, do_sample=False, use_cache=True)
     (EOS stopping is disabled so that every row gets exactly `new` tokens);
  3. timing: a manual greedy loop with HF's cache (warm-up first): prefill ms of the prompt, then
     ms for each 1-token decode step (torch.cuda.synchronize around each); its tokens are checked
     against generate()'s;
  4. logits_bf16 = logits of ONE no-cache forward over generated_ids (logits_to_keep=0), bf16 model;
  5. model.float() (TF32 off), the same forward -> logits_fp32 (fp32 activations on the bf16 weights:
     this is the reference, as in shared/fixtures).

Output (safetensors, via safetensors.torch.save_file):
  input_ids      I64 [batch, prompt_len]
  generated_ids  I64 [batch, prompt_len + new]
  logits_fp32    F32 [batch, prompt_len + new, vocab]
  logits_bf16    F32 [batch, prompt_len + new, vocab]   (bf16 values, stored as F32)
  metadata (strings): prompt_len, new, batch, seed, prefill_ms, decode_ms_per_token (median),
    decode_ms_per_token_mean, transformers, torch, device, bf16-vs-fp32 figures, ...

Usage:
  python3 scripts/hf_reference.py --model /data/zamba-rand-7b --out ref.safetensors
  python3 scripts/hf_reference.py --model DIR --out REF.safetensors --prompt-len 300 --new 32 --seed 0 --batch 1
"""

import argparse
import json
import os
import random
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

VOCAB_LO = 3
BOS = 1


def die(msg):
    print(f"ERROR: {msg}", file=sys.stderr)
    sys.exit(1)


def set_fp32_exact(torch):
    """No TF32 anywhere, so the fp32 pass really is fp32."""
    torch.set_float32_matmul_precision("highest")
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    except Exception as e:  # newer torch may only accept the fp32_precision API
        print(f"  note: legacy allow_tf32 flags not set ({e}); trying fp32_precision='ieee'")
        try:
            torch.backends.cuda.matmul.fp32_precision = "ieee"
            torch.backends.cudnn.conv.fp32_precision = "ieee"
        except Exception as e2:
            print(f"  WARNING: could not disable TF32 for cudnn convs: {e2}")


def load_model(cls, path, torch):
    """bf16, eager attention, on cuda. Falls back to a CPU load + .cuda() if device_map needs accelerate."""
    kw = dict(dtype=torch.bfloat16, attn_implementation="eager", local_files_only=True)
    try:
        model = cls.from_pretrained(path, device_map="cuda", **kw)
    except (ImportError, ValueError) as e:
        if "accelerate" not in str(e):
            raise
        print(f"  note: device_map='cuda' unavailable ({e}); loading on the CPU and moving to cuda")
        model = cls.from_pretrained(path, **kw).to("cuda")
    model.eval()
    return model


def sync():
    import torch

    torch.cuda.synchronize()


def manual_greedy(model, input_ids, new):
    """Greedy decode with HF's cache. Returns (tokens [B, new], prefill_ms, [decode step ms])."""
    import torch

    sync()
    t0 = time.perf_counter()
    out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1)
    tok = out.logits[:, -1, :].float().argmax(dim=-1, keepdim=True)
    sync()
    prefill_ms = (time.perf_counter() - t0) * 1e3
    pkv = out.past_key_values
    if pkv is None:
        die("model returned no past_key_values with use_cache=True")
    toks = [tok]
    steps = []
    for _ in range(new - 1):
        sync()
        t0 = time.perf_counter()
        out = model(input_ids=tok, past_key_values=pkv, use_cache=True, logits_to_keep=1)
        tok = out.logits[:, -1, :].float().argmax(dim=-1, keepdim=True)
        sync()
        steps.append((time.perf_counter() - t0) * 1e3)
        pkv = out.past_key_values
        toks.append(tok)
    del out, pkv
    return torch.cat(toks, dim=1), prefill_ms, steps


def full_forward_logits(model, ids):
    """Logits of one no-cache forward over ids, all positions, as fp32 on the CPU."""
    out = model(input_ids=ids, use_cache=False, logits_to_keep=0)
    logits = out.logits
    if logits.shape[:2] != ids.shape:
        die(f"forward returned logits {tuple(logits.shape)} for ids {tuple(ids.shape)} (logits_to_keep=0 ignored?)")
    return logits.float().cpu()


def compare(a, b):
    d = (a - b).abs()
    return {
        "max_abs": float(d.max()),
        "mean_abs": float(d.double().mean()),
        "argmax_agree": float((a.argmax(-1) == b.argmax(-1)).double().mean()),
    }


def greedy_consistency(logits, gen, prompt_len):
    """Fraction of generated tokens equal to the argmax of the no-cache logits one position earlier."""
    pred = logits[:, prompt_len - 1 : -1, :].argmax(-1)
    return float((pred == gen[:, prompt_len:]).double().mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HF checkpoint folder")
    ap.add_argument("--out", required=True, help="output .safetensors")
    ap.add_argument("--prompt-len", type=int, default=300)
    ap.add_argument("--new", type=int, default=32, help="greedy tokens to generate (>= 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()
    if args.prompt_len < 2:
        die("--prompt-len must be >= 2")
    if args.new < 1:
        die("--new must be >= 1")
    if args.batch < 1:
        die("--batch must be >= 1")
    if not os.path.isfile(os.path.join(args.model, "config.json")):
        die(f"{args.model}: no config.json (not a HF checkpoint folder?)")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        die(f"output folder {out_dir} does not exist")

    t_start = time.time()
    import numpy as np
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers import ZambaForCausalLM

    if not torch.cuda.is_available():
        die("CUDA is not available")
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.cuda.manual_seed_all(args.seed)
    dev = torch.device("cuda")
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, GPU {torch.cuda.get_device_name()}")

    # 1. prompt
    g = torch.Generator(device="cpu").manual_seed(args.seed)
    t0 = time.time()
    model = load_model(ZambaForCausalLM, args.model, torch)
    cfg = model.config
    vocab = cfg.vocab_size
    if vocab <= VOCAB_LO:
        die(f"vocab_size {vocab} too small")
    input_ids = torch.randint(VOCAB_LO, vocab, (args.batch, args.prompt_len), generator=g, dtype=torch.int64)
    input_ids[:, 0] = BOS
    # HF 5.17 creates mamba.A_log as an fp32 Parameter (torch.arange(..., dtype=float32) in __init__), and
    # from_pretrained(dtype=bf16) keeps it fp32, holding the checkpoint's bf16 values exactly. HF only ever
    # uses -exp(A_log.float()), so this changes nothing numerically. Everything else must be bf16.
    not_bf16 = [(n, p.dtype) for n, p in model.named_parameters() if p.dtype != torch.bfloat16]
    unexpected = [x for x in not_bf16 if not (x[0].endswith(".A_log") and x[1] == torch.float32)]
    if unexpected:
        die(f"expected an all-bf16 model after loading; {len(unexpected)} parameters are not: {unexpected[:8]}")
    for n, p in model.named_parameters():
        if n.endswith(".A_log") and p.dtype == torch.float32:
            if not torch.equal(p, p.to(torch.bfloat16).float()):
                die(f"{n} is fp32 and not bf16-exact: the checkpoint value was not loaded?")
    if not_bf16:
        print(f"  note: {len(not_bf16)} A_log parameters are fp32 (bf16-exact values, as HF 5.17 loads them)")
    print(f"loaded {args.model} (bf16, eager attention) in {time.time() - t0:.1f} s; "
          f"{sum(p.numel() for p in model.parameters()):,} params, layers {cfg.num_hidden_layers}, "
          f"hidden {cfg.hidden_size}, attn impl {cfg._attn_implementation}")
    ids = input_ids.to(dev)

    with torch.no_grad():
        # 2. generate (EOS disabled: every row gets exactly `new` tokens)
        model.generation_config.eos_token_id = None
        t0 = time.time()
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new,
                             do_sample=False, use_cache=True)
        sync()
        gen_s = time.time() - t0
        if gen.shape != (args.batch, args.prompt_len + args.new):
            die(f"generate returned {tuple(gen.shape)}, expected {(args.batch, args.prompt_len + args.new)}")
        if not torch.equal(gen[:, : args.prompt_len], ids):
            die("generate output does not start with the prompt")
        print(f"generate: {args.new} tokens x batch {args.batch} in {gen_s:.2f} s (includes warm-up effects)")

        # 3. timing with a manual greedy loop (warm-up on a short prompt first)
        manual_greedy(model, ids, 3)  # warm-up at the real shapes
        man_toks, prefill_ms, steps = manual_greedy(model, ids, args.new)
        same = float((man_toks == gen[:, args.prompt_len :]).double().mean())
        if same != 1.0:
            print(f"  WARNING: manual greedy loop agrees with generate() on only {same:.4f} of the tokens")
        steps_sorted = sorted(steps)
        dec_med = steps_sorted[len(steps) // 2] if steps else float("nan")
        dec_mean = sum(steps) / len(steps) if steps else float("nan")
        print(f"prefill {args.prompt_len} tok x batch {args.batch}: {prefill_ms:.1f} ms; decode: median "
              f"{dec_med:.2f} ms/token, mean {dec_mean:.2f} ms/token over {len(steps)} steps")
        torch.cuda.empty_cache()

        # 4. bf16 no-cache forward over all generated ids
        logits_bf16 = full_forward_logits(model, gen)
        torch.cuda.empty_cache()
        peak_bf16 = torch.cuda.max_memory_allocated() / 2**30

        # 5. fp32 model, same forward
        set_fp32_exact(torch)
        model.float()
        p_dtypes = {p.dtype for p in model.parameters()}
        if p_dtypes != {torch.float32}:
            die(f"model.float() left parameter dtypes {p_dtypes}")
        torch.cuda.empty_cache()
        logits_fp32 = full_forward_logits(model, gen)
    del model
    torch.cuda.empty_cache()

    gen_cpu = gen.cpu()
    for name, t in (("logits_bf16", logits_bf16), ("logits_fp32", logits_fp32)):
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            die(f"{name} has {bad} non-finite values")
    stats_all = compare(logits_bf16, logits_fp32)
    P = args.prompt_len
    stats_gen = compare(logits_bf16[:, P:], logits_fp32[:, P:])
    cons_bf16 = greedy_consistency(logits_bf16, gen_cpu, P)
    cons_fp32 = greedy_consistency(logits_fp32, gen_cpu, P)
    abs_mean = float(logits_fp32.abs().double().mean())

    meta = {
        "about": "HF Zamba reference: fp32 and bf16 no-cache logits over generated_ids",
        "model": os.path.abspath(args.model),
        "prompt_len": str(P),
        "new": str(args.new),
        "batch": str(args.batch),
        "seed": str(args.seed),
        "bos": str(BOS),
        "prefill_ms": f"{prefill_ms:.3f}",
        "decode_ms_per_token": f"{dec_med:.3f}",
        "decode_ms_per_token_mean": f"{dec_mean:.3f}",
        "decode_steps_ms": json.dumps([round(s, 3) for s in steps]),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(),
        "attn_implementation": "eager",
        "bf16_vs_fp32_max_abs": f"{stats_all['max_abs']:.6g}",
        "bf16_vs_fp32_mean_abs": f"{stats_all['mean_abs']:.6g}",
        "bf16_vs_fp32_argmax_agree": f"{stats_all['argmax_agree']:.6g}",
        "fp32_logits_abs_mean": f"{abs_mean:.6g}",
        "generate_matches_bf16_full_forward_argmax": f"{cons_bf16:.6g}",
        "generate_matches_fp32_full_forward_argmax": f"{cons_fp32:.6g}",
        "manual_loop_matches_generate": f"{same:.6g}",
    }
    tensors = {
        "input_ids": input_ids.contiguous(),
        "generated_ids": gen_cpu.to(torch.int64).contiguous(),
        "logits_fp32": logits_fp32.contiguous(),
        "logits_bf16": logits_bf16.contiguous(),
    }
    save_file(tensors, args.out, metadata=meta)

    print()
    print(f"wrote {args.out}: logits [{args.batch}, {P + args.new}, {vocab}]")
    print("| HF bf16 vs HF fp32 | max abs | mean abs | argmax agree |")
    print("|---|---|---|---|")
    print(f"| all {P + args.new} positions | {stats_all['max_abs']:.4f} | {stats_all['mean_abs']:.5f} | "
          f"{stats_all['argmax_agree']:.4f} |")
    print(f"| generated positions [{P}, {P + args.new}) | {stats_gen['max_abs']:.4f} | {stats_gen['mean_abs']:.5f} | "
          f"{stats_gen['argmax_agree']:.4f} |")
    print(f"|fp32 logits| mean {abs_mean:.4f}")
    print(f"generate() tokens == argmax of the no-cache forward: bf16 {cons_bf16:.4f}, fp32 {cons_fp32:.4f}")
    print(f"timings (bf16, batch {args.batch}): prefill {P} tokens {prefill_ms:.1f} ms, "
          f"decode {dec_med:.2f} ms/token (median), {dec_mean:.2f} (mean)")
    print(f"peak GPU memory during the bf16 phase: {peak_bf16:.1f} GiB; total elapsed {time.time() - t_start:.1f} s")


if __name__ == "__main__":
    main()
