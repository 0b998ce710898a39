#!/usr/bin/env python3
"""Writes one markdown table comparing `zamba-run bench --json` runs with scripts/hf_bench.py.

Inputs: one or more zamba-run JSON outputs (each holds a pp<P> row and a tg<N> row for one batch
size; the tg row's context is that run's prompt length P) and hf_bench.py's --json file. For each
shape it looks both sides up; a shape one side did not measure (or a run that failed) shows n/a.

Shapes are kind:tokens:batch, with kind pp (prefill of `tokens` per sequence) or tg (decode steps
after a `tokens`-token prompt). Default: pp:512:1 tg:512:1 pp:2048:1 pp:512:64 tg:512:64.

Tokens/s: prefill = batch x prompt / time; decode = batch / step time. Speed-up = zamba tokens/s
over HF tokens/s. % of roofline comes from zamba-run's JSON: prefill = model FLOPs / time / the
bf16 GEMM rate, decode = weight bytes per step / step time / the copy bandwidth, both measured in
the same run.

Usage:
  python3 scripts/bench_table.py --zamba z1.json z2.json --hf hf.json --out table.md
"""

import argparse
import json
import os
import sys

DEFAULT_SHAPES = ["pp:512:1", "tg:512:1", "pp:2048:1", "pp:512:64", "tg:512:64"]


def warn(msg):
    print(f"bench_table: {msg}", file=sys.stderr)


def read_json(path):
    """The JSON object in `path`: the whole file, else its last line that parses as an object."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        warn(f"{path}: {e}")
        return None
    try:
        obj = json.loads(text)
        return obj if isinstance(obj, dict) else None
    except json.JSONDecodeError:
        pass
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                return obj
    warn(f"{path}: no JSON object in it")
    return None


def parse_shape(s):
    try:
        kind, tokens, batch = s.split(":")
        shape = (kind, int(tokens), int(batch))
    except ValueError:
        shape = None
    if shape is None or kind not in ("pp", "tg") or shape[1] < 1 or shape[2] < 1:
        raise argparse.ArgumentTypeError(f"shape {s!r}: want pp|tg:TOKENS:BATCH, e.g. tg:512:64")
    return shape


def zamba_runs(paths):
    runs = []
    for p in paths:
        j = read_json(p)
        if j is None:
            continue
        rows = j.get("rows") or []
        pp = [r for r in rows if str(r.get("test", "")).startswith("pp")]
        ctx = int(pp[0]["test"][2:]) if pp else None
        runs.append({"path": p, "json": j, "ctx": ctx, "rows": rows})
    return runs


def zamba_lookup(runs, kind, tokens, batch):
    """(row, run) of the zamba measurement of this shape, or (None, None)."""
    for run in runs:
        for r in run["rows"]:
            if r.get("batch") != batch:
                continue
            test = str(r.get("test", ""))
            if kind == "pp" and test == f"pp{tokens}":
                return r, run
            if kind == "tg" and test.startswith("tg") and run["ctx"] == tokens:
                return r, run
    return None, None


def hf_decodes(hf):
    d = hf.get("decode")
    if isinstance(d, dict):  # older hf_bench.py: one batch-1 decode
        return [dict(d, batch=d.get("batch", 1))]
    return d or []


def hf_lookup(hf, kind, tokens, batch):
    """{tokens_per_s, ms, how} for this shape from hf_bench.py's JSON, or None."""
    if hf is None:
        return None
    if kind == "pp":
        for r in hf.get("prefill") or []:
            if r.get("prompt_len") == tokens and r.get("batch", 1) == batch:
                return {
                    "tokens_per_s": r["tokens_per_s"],
                    "ms": r["median_s"] * 1e3,
                    "how": f"median of {len(r.get('runs_s') or [])}",
                }
        # The prefill before the decode steps: one run.
        for d in hf_decodes(hf):
            if d.get("ctx") == tokens and d.get("batch") == batch and d.get("prefill_s"):
                return {
                    "tokens_per_s": batch * tokens / d["prefill_s"],
                    "ms": d["prefill_s"] * 1e3,
                    "how": "1 run",
                }
        return None
    for d in hf_decodes(hf):
        if d.get("ctx") == tokens and d.get("batch") == batch:
            return {
                "tokens_per_s": batch * 1e3 / d["median_ms_per_token"],
                "ms": d["median_ms_per_token"],
                "how": f"median of {d.get('steps', '?')} steps",
            }
    return None


def rate(tps):
    return f"{tps:,.0f}" if tps >= 1000 else f"{tps:,.1f}"


def cell(kind, tps, ms, how):
    if kind == "pp":
        return f"{rate(tps)} tok/s ({ms:,.1f} ms; {how})"
    return f"{ms:,.2f} ms/step, {rate(tps)} tok/s ({how})"


def speedup(x):
    return f"{x:,.0f}×" if x >= 100 else f"{x:,.1f}×"


def span(values, fmt):
    values = [v for v in values if isinstance(v, (int, float))]
    if not values:
        return "n/a"
    lo, hi = min(values), max(values)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}–{fmt.format(hi)}"


def table(runs, hf, shapes, gpu, checkpoint, note):
    out = ["# zamba vs HF transformers", ""]
    facts = []
    if gpu:
        facts.append(f"GPU: {gpu}.")
    if checkpoint:
        facts.append(f"Checkpoint: `{checkpoint}`.")
    if note:
        facts.append(note)
    if runs:
        js = [r["json"] for r in runs]
        facts.append(
            f"zamba-run bench (median of its --reps runs after a warm-up): roofline measured in the same runs, "
            f"copy {span([j.get('copy_tb_s') for j in js], '{:.2f}')} TB/s, "
            f"bf16 GEMM {span([j.get('gemm_tflop_s') for j in js], '{:.0f}')} TFLOP/s."
        )
    else:
        facts.append("zamba-run bench: no result (see the logs next to this table).")
    if hf is not None:
        k = hf.get("mamba_kernels_installed") or {}
        path = (
            "its torch fallback for the mamba mixer (mamba-ssm / causal-conv1d not installed)"
            if not any(k.values())
            else f"mamba kernels installed: {k}"
        )
        facts.append(
            f"HF transformers {hf.get('transformers', '?')}, torch {hf.get('torch', '?')}, "
            f"{hf.get('dtype', 'bfloat16')}, {hf.get('attn_implementation', 'eager')} attention, {path}."
        )
    else:
        facts.append("HF transformers: no result (the run failed or was skipped; see hf.log).")
    out += [" ".join(facts), ""]
    out.append("| shape | zamba | HF transformers | speed-up | zamba % of roofline |")
    out.append("| --- | ---: | ---: | ---: | ---: |")
    missing = False
    for kind, tokens, batch in shapes:
        name = (
            f"prefill {tokens} tokens, batch {batch}"
            if kind == "pp"
            else f"decode after a {tokens}-token prompt, batch {batch}"
        )
        z, _ = zamba_lookup(runs, kind, tokens, batch)
        h = hf_lookup(hf, kind, tokens, batch)
        zc = hc = sp = roof = "n/a"
        if z is not None:
            if kind == "pp":
                how = "median"
            else:
                how = f"{str(z['test'])[2:]} steps"
            zc = cell(kind, z["tokens_per_s"], z["ms"], how)
            roof = f"{z['roofline_pct']:.1f} %"
        if h is not None:
            hc = cell(kind, h["tokens_per_s"], h["ms"], h["how"])
        if z is not None and h is not None and h["tokens_per_s"] > 0:
            sp = speedup(z["tokens_per_s"] / h["tokens_per_s"])
        missing = missing or z is None or h is None
        out.append(f"| {name} | {zc} | {hc} | {sp} | {roof} |")
    out.append("")
    out.append(
        "Tokens/s: prefill = batch × prompt tokens / time; decode = batch / step time. Speed-up = zamba "
        "tokens/s ÷ HF tokens/s. % of roofline (zamba only): prefill = model FLOPs / time / the GEMM rate; "
        "decode = weight bytes read per step / step time / the copy bandwidth."
    )
    if missing:
        out.append("n/a: that side did not measure this shape, or its run failed (see the logs).")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zamba", nargs="*", default=[], help="zamba-run bench --json outputs")
    ap.add_argument("--hf", default=None, help="hf_bench.py --json output")
    ap.add_argument("--shape", action="append", type=parse_shape, default=None,
                    help="kind:tokens:batch (repeatable); default " + " ".join(DEFAULT_SHAPES))
    ap.add_argument("--gpu", default="", help="GPU name for the header")
    ap.add_argument("--checkpoint", default="", help="checkpoint path for the header")
    ap.add_argument("--note", default="", help="extra sentence for the header")
    ap.add_argument("--out", default=None, help="also write the table here")
    args = ap.parse_args()
    shapes = args.shape or [parse_shape(s) for s in DEFAULT_SHAPES]
    runs = zamba_runs(args.zamba)
    hf = read_json(args.hf) if args.hf and os.path.exists(args.hf) else None
    if args.hf and hf is None:
        warn(f"{args.hf}: no HF results")
    md = table(runs, hf, shapes, args.gpu, args.checkpoint, args.note)
    sys.stdout.write(md)
    if args.out:
        with open(args.out, "w") as f:
            f.write(md)


if __name__ == "__main__":
    main()
