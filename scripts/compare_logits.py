#!/usr/bin/env python3
"""Compare our engine's logits with the HF reference written by scripts/hf_reference.py.

REF.safetensors holds logits_fp32 and logits_bf16 (F32 [batch, seq, vocab]) plus metadata
(prompt_len, new). OURS.safetensors holds our logits under --key (default "logits"), F32
[batch, seq, vocab], the same shape as the reference (else error, exit 2).

For "ours vs HF fp32" and "HF bf16 vs HF fp32" it prints max abs diff, mean abs diff and argmax
agreement, over all positions and over the generated positions [prompt_len, seq) only.

Exit status: 0 only if, over all positions, ours <= HF bf16 on max abs and on mean abs, and
ours >= HF bf16 on argmax agreement (each with a 1e-6 tolerance); 1 otherwise; 2 on bad input.
The generated-positions figures are printed but do not gate. If OURS also has generated_ids, the
greedy tokens are compared with the reference's (printed, not gating).

Needs only numpy + safetensors (no torch).

Usage:
  python3 scripts/compare_logits.py ref.safetensors ours.safetensors
  python3 scripts/compare_logits.py ref.safetensors ours.safetensors --key logits --json cmp.json
"""

import argparse
import json
import sys

TOL = 1e-6


def die(msg, code=2):
    print(f"ERROR: {msg}", file=sys.stderr)
    sys.exit(code)


def load(path, keys):
    from safetensors import safe_open

    try:
        f = safe_open(path, framework="np")
    except Exception as e:  # noqa: BLE001 - report any open/parse failure the same way
        die(f"cannot open {path}: {e}")
    with f:
        meta = f.metadata() or {}
        have = set(f.keys())
        out = {}
        for k in keys:
            if k in have:
                out[k] = f.get_tensor(k)
    return out, meta, have


def metrics(ours, ref):
    import numpy as np

    d = np.abs(ours.astype(np.float32, copy=False) - ref.astype(np.float32, copy=False))
    return {
        "max_abs": float(d.max()) if d.size else 0.0,
        "mean_abs": float(d.mean(dtype=np.float64)) if d.size else 0.0,
        "argmax_agree": float((ours.argmax(-1) == ref.argmax(-1)).mean(dtype=np.float64)) if d.size else 1.0,
        "positions": int(d.shape[0] * d.shape[1]),
    }


def main():
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ref", help="reference .safetensors from hf_reference.py")
    ap.add_argument("ours", help="our logits .safetensors")
    ap.add_argument("--key", default="logits", help="tensor name of our logits (default: logits)")
    ap.add_argument("--prompt-len", type=int, default=None,
                    help="start of the generated positions (default: the reference's metadata prompt_len)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()

    ref, meta, ref_keys = load(args.ref, ["logits_fp32", "logits_bf16", "generated_ids"])
    for k in ("logits_fp32", "logits_bf16"):
        if k not in ref:
            die(f"{args.ref} has no '{k}' (keys: {sorted(ref_keys)})")
    ours_d, _, our_keys = load(args.ours, [args.key, "generated_ids"])
    if args.key not in ours_d:
        die(f"{args.ours} has no '{args.key}' (keys: {sorted(our_keys)})")
    fp32, bf16, ours = ref["logits_fp32"], ref["logits_bf16"], ours_d[args.key]

    for name, a in (("ref logits_fp32", fp32), ("ref logits_bf16", bf16), (f"ours {args.key}", ours)):
        if a.ndim != 3:
            die(f"{name} has shape {a.shape}, expected [batch, seq, vocab]")
        if not np.issubdtype(a.dtype, np.floating):
            die(f"{name} has dtype {a.dtype}, expected a float type (F32)")
    if bf16.shape != fp32.shape:
        die(f"reference logits_bf16 {bf16.shape} and logits_fp32 {fp32.shape} differ in shape")
    if ours.shape != fp32.shape:
        die(f"our logits have shape {ours.shape}, the reference {fp32.shape}: they must match")
    if ours.dtype != np.float32:
        print(f"note: our logits are {ours.dtype}, converting to float32")
    n_bad = int((~np.isfinite(ours)).sum())

    B, S, V = fp32.shape
    if args.prompt_len is not None:
        P = args.prompt_len
    elif "prompt_len" in meta:
        P = int(meta["prompt_len"])
    else:
        die(f"{args.ref} has no prompt_len metadata; pass --prompt-len")
    if not 0 < P <= S:
        die(f"prompt_len {P} is outside [1, {S}]")

    rows = {
        "ours_vs_fp32": metrics(ours, fp32),
        "hfbf16_vs_fp32": metrics(bf16, fp32),
        "ours_vs_fp32_gen": metrics(ours[:, P:], fp32[:, P:]),
        "hfbf16_vs_fp32_gen": metrics(bf16[:, P:], fp32[:, P:]),
    }
    o, h = rows["ours_vs_fp32"], rows["hfbf16_vs_fp32"]
    checks = {
        "max_abs": o["max_abs"] <= h["max_abs"] + TOL,
        "mean_abs": o["mean_abs"] <= h["mean_abs"] + TOL,
        "argmax_agree": o["argmax_agree"] >= h["argmax_agree"] - TOL,
        "finite": n_bad == 0,
    }
    ok = all(checks.values())

    tok = None
    if "generated_ids" in ours_d and "generated_ids" in ref:
        a, b = ours_d["generated_ids"], ref["generated_ids"]
        if a.shape == b.shape:
            tok = float((a[:, P:] == b[:, P:]).mean(dtype=np.float64)) if S > P else 1.0
        else:
            print(f"note: generated_ids shapes differ (ours {a.shape}, ref {b.shape}); not compared")

    print(f"ref  {args.ref}  (transformers {meta.get('transformers', '?')}, prompt_len {P}, new {S - P})")
    print(f"ours {args.ours}  key '{args.key}'   shape [batch {B}, seq {S}, vocab {V}]")
    print()
    print("| vs HF fp32 | positions | max abs | mean abs | argmax agree |")
    print("|---|---|---|---|---|")
    labels = {
        "ours_vs_fp32": "ours, all",
        "hfbf16_vs_fp32": "HF bf16, all",
        "ours_vs_fp32_gen": f"ours, gen [{P},{S})",
        "hfbf16_vs_fp32_gen": f"HF bf16, gen [{P},{S})",
    }
    for k, lab in labels.items():
        r = rows[k]
        print(f"| {lab} | {r['positions']} | {r['max_abs']:.6f} | {r['mean_abs']:.6f} | {r['argmax_agree']:.6f} |")
    print()
    if n_bad:
        print(f"FAIL: our logits have {n_bad} non-finite values")
    if tok is not None:
        print(f"greedy tokens (generated_ids[:, {P}:]) equal to the reference's: {tok:.4f}")
    for k, v in checks.items():
        if k != "finite":
            print(f"  {'ok  ' if v else 'FAIL'} ours {k} {o[k]:.6f} {'<=' if k != 'argmax_agree' else '>='} "
                  f"HF bf16 {h[k]:.6f}")
    print("PASS" if ok else "FAIL")

    if args.json:
        res = {
            "ref": args.ref,
            "ours": args.ours,
            "key": args.key,
            "shape": [B, S, V],
            "prompt_len": P,
            "metrics": rows,
            "checks": checks,
            "non_finite": n_bad,
            "generated_ids_agree": tok,
            "pass": ok,
        }
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
            f.write("\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
