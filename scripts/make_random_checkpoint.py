#!/usr/bin/env python3
"""Build a random-weight Zamba checkpoint with the exact Zamba-7B-v1 architecture.

The folder written is a normal Hugging Face checkpoint (config.json, generation_config.json,
model-0000x-of-0000y.safetensors + model.safetensors.index.json, or a single model.safetensors when
it fits in one shard), all tensors bf16, HF v5 naming, the shared transformer block stored once under
model.layers.<first hybrid>.shared_transf.* (layer 2) and no lm_head.weight (tied to embed_tokens).

Weights: the model is built with ZambaForCausalLM(config) on the GPU (fp32), so HF's own
initialisation runs first; then the tensors are re-drawn the way the tiny golden fixture
(shared/fixtures/tiny-a) was made, so that a kernel which ignores any tensor changes the logits:

  * every RMSNorm weight   = 1 + 0.2 * N(0, 1), clipped to [0.4, 1.6]   (normal, not uniform)
  * mamba D                ~ U(0.5, 1.5)
  * mamba A_log            = log(U(1, 16))
  * mamba conv1d.bias      ~ N(0, 0.1)
  * mamba conv1d.weight    ~ N(0, 1/sqrt(d_conv))
  * mamba dt_proj_bias     = Mamba init: dt = exp(U(log 1e-3, log 1e-1)) clamped >= 1e-4,
                             bias = dt + log(-expm1(-dt))
  * --init fanin (default): every other weight matrix (in_proj, out_proj, x_proj_weight,
    dt_proj_weight, q/k/v/o, MLP, linear) ~ N(0, 1/sqrt(fan_in)), fan_in = last dim, and
    embed_tokens (= lm_head) ~ N(0, 0.5). These are the fixture's statistics.
  * --init hf: those keep HF's init (normal std 0.02; dt_proj uniform +-dt_rank^-0.5).
    Measured on an H200 (transformers 5.17, 76 layers, prompt 300): with --init hf the random model
    is chaotic, HF bf16 vs HF fp32 argmax agreement is only 0.12 (|logits| ~1), so it is useless
    for comparisons. --init fanin gives bf16-vs-fp32 max 13.4 / mean 1.92 / argmax 1.00 with
    |logits| ~24.7; adding --branch-scale 0.3 gives max 5.0 / mean 0.68 / argmax 1.00.
  * --branch-scale S multiplies every mamba out_proj and hybrid linear weight by S (the outputs
    that feed the residual stream); S < 1 makes the deep random model better conditioned.
  * --embed-std S re-draws embed_tokens (= the tied lm_head) ~ N(0, S), which sets the logit scale.

The model is cast to bf16 and saved with save_pretrained(max_shard_size="5GB"); the saved folder is
then verified (one copy of the shared block, no lm_head.weight, all BF16, expected tensor count and
byte total). If save_pretrained ever writes one shared-block copy per hybrid layer, the extra
copies are removed from the shards and the index is rewritten.

Runs on a CUDA machine with torch + transformers 5.x (tested against the 5.17 API). No network.

Usage:
  python3 scripts/make_random_checkpoint.py --out /data/zamba-rand-7b
  python3 scripts/make_random_checkpoint.py --out /data/zamba-rand-7b-b03 --branch-scale 0.3
  python3 scripts/make_random_checkpoint.py --out /tmp/zr8 --layers 8 --seed 1
  python3 scripts/make_random_checkpoint.py --out /tmp/ztiny --tiny            # fixture-sized config
  python3 scripts/make_random_checkpoint.py --out DIR --tokenizer /path/tokenizer.json --overwrite
"""

import argparse
import json
import math
import os
import random
import re
import shutil
import struct
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def die(msg):
    print(f"ERROR: {msg}", file=sys.stderr)
    sys.exit(1)


def block_types(num_layers, period=6, offset=4):
    """ZAMBA.md section 1 / ZambaConfig.__post_init__: v5 names ("linear_attention" = mamba-only)."""
    if num_layers < 3:
        die(f"--layers must be >= 3 (the shared block lives at layer 2), got {num_layers}")
    return ["linear_attention", "linear_attention", "hybrid"] + [
        "hybrid" if i % period == offset else "linear_attention" for i in range(num_layers - 3)
    ]


def build_config(args):
    from transformers import ZambaConfig

    if args.tiny:
        # same shape family as shared/fixtures/tiny-a/config.json
        dims = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, intermediate_size=256,
                    mamba_dt_rank=4, max_position_embeddings=512)
        default_layers = 13
    else:
        dims = dict(hidden_size=3712, num_attention_heads=16, num_key_value_heads=16, intermediate_size=14848,
                    mamba_dt_rank=232, max_position_embeddings=4096)
        default_layers = 76
    n_layers = args.layers if args.layers is not None else default_layers
    types = block_types(n_layers)
    cfg = ZambaConfig(
        vocab_size=32000,
        num_hidden_layers=n_layers,
        n_mamba_heads=2,
        mamba_d_state=16,
        mamba_d_conv=4,
        mamba_expand=2,
        attn_layer_period=6,
        attn_layer_offset=4,
        rms_norm_eps=1e-5,
        hidden_act="gelu",
        hidden_mamba_act="silu",
        tie_word_embeddings=True,
        use_mamba_kernels=False,
        mamba_conv_bias=True,
        mamba_proj_bias=False,
        attention_dropout=0.0,
        initializer_range=0.02,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        layers_block_type=types,
        **dims,
    )
    # Fail loudly if HF derived something else than ZAMBA.md says.
    H = dims["hidden_size"]
    checks = {
        "layers_block_type": (list(cfg.layers_block_type), types),
        "attention_hidden_size": (cfg.attention_hidden_size, 2 * H),
        "attention_head_dim": (cfg.attention_head_dim, 2 * H // dims["num_attention_heads"]),
        "mamba_dt_rank": (cfg.mamba_dt_rank, dims["mamba_dt_rank"]),
        "num_hidden_layers": (cfg.num_hidden_layers, n_layers),
        "tie_word_embeddings": (cfg.tie_word_embeddings, True),
    }
    for k, (got, want) in checks.items():
        if got != want:
            die(f"ZambaConfig.{k} = {got!r}, expected {want!r}")
    return cfg


def expected_counts(cfg):
    """(tensor count, parameter count) of the saved checkpoint, from ZAMBA.md section 2."""
    H, L, V = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    DI = cfg.mamba_expand * H
    NH, N, R, K = cfg.n_mamba_heads, cfg.mamba_d_state, cfg.mamba_dt_rank, cfg.mamba_d_conv
    DH = DI // NH
    AH, F = cfg.attention_hidden_size, cfg.intermediate_size
    q_out = cfg.num_attention_heads * cfg.attention_head_dim
    kv_out = cfg.num_key_value_heads * cfg.attention_head_dim
    n_hyb = sum(t == "hybrid" for t in cfg.layers_block_type)
    mamba = H + 2 * DI * H + DI * K + DI + NH * (R + 2 * N) * DH + NH * DH * R + NH * DH + NH * DH * N + NH * DH + H * DI
    shared = AH + AH * q_out + 2 * AH * kv_out + q_out * H + H + 3 * H * F
    params = L * mamba + n_hyb * H * H + shared + V * H + H
    tensors = 10 * L + n_hyb + 9 + 2
    return tensors, params


def randomise(model, cfg, init_mode, seed, embed_std=None, branch_scale=1.0):
    """Randomise the constant-initialised tensors (see module docstring). Returns a count per kind."""
    import torch

    gen = torch.Generator(device="cuda")
    gen.manual_seed(seed + 12345)
    counts = {"norm": 0, "D": 0, "A_log": 0, "conv_bias": 0, "conv_weight": 0, "dt_bias": 0, "matrix": 0, "embed": 0,
              "branch_out": 0}
    t_min, t_max, t_floor = cfg.time_step_min, cfg.time_step_max, cfg.time_step_floor

    def U(shape, lo, hi):
        return torch.rand(shape, generator=gen, device="cuda", dtype=torch.float32) * (hi - lo) + lo

    def Nrm(shape, std):
        return torch.randn(shape, generator=gen, device="cuda", dtype=torch.float32) * std

    with torch.no_grad():
        # named_parameters() de-duplicates tied parameters: the shared block shows up once (layer 2),
        # lm_head.weight not at all (it is embed_tokens.weight).
        for name, p in model.named_parameters():
            if p.dtype != torch.float32 or p.device.type != "cuda":
                die(f"{name}: expected an fp32 cuda parameter before randomisation, got {p.dtype} on {p.device}")
            shape = p.shape
            if re.search(r"(input_layernorm|pre_ff_layernorm|final_layernorm)\.weight$", name):
                p.copy_((1.0 + Nrm(shape, 0.2)).clamp_(0.4, 1.6))
                counts["norm"] += 1
            elif name.endswith("mamba.D"):
                p.copy_(U(shape, 0.5, 1.5))
                counts["D"] += 1
            elif name.endswith("mamba.A_log"):
                p.copy_(torch.log(U(shape, 1.0, 16.0)))
                counts["A_log"] += 1
            elif name.endswith("mamba.conv1d.bias"):
                p.copy_(Nrm(shape, 0.1))
                counts["conv_bias"] += 1
            elif name.endswith("mamba.conv1d.weight"):
                p.copy_(Nrm(shape, 1.0 / math.sqrt(cfg.mamba_d_conv)))
                counts["conv_weight"] += 1
            elif name.endswith("mamba.dt_proj_bias"):
                dt = torch.exp(U(shape, math.log(t_min), math.log(t_max))).clamp(min=t_floor)
                p.copy_(dt + torch.log(-torch.expm1(-dt)))
                counts["dt_bias"] += 1
            elif name == "model.embed_tokens.weight":
                if embed_std is not None:
                    p.copy_(Nrm(shape, embed_std))
                elif init_mode == "fanin":
                    p.copy_(Nrm(shape, 0.5))
                counts["embed"] += 1
            elif p.dim() >= 2:
                if init_mode == "fanin":
                    p.copy_(Nrm(shape, 1.0 / math.sqrt(shape[-1])))
                counts["matrix"] += 1
                # the projections whose output is added to the residual stream / the mamba norm input
                if branch_scale != 1.0 and re.search(r"(mamba\.out_proj|layers\.\d+\.linear)\.weight$", name):
                    p.mul_(branch_scale)
                    counts["branch_out"] += 1
            else:
                die(f"unexpected parameter {name} {tuple(shape)}: don't know how to randomise it")
    return counts


def check_ties(model, cfg):
    """The 13 shared_transf modules must share one set of Parameters, and lm_head must be embed_tokens."""
    layers = model.model.layers
    hyb = [i for i, t in enumerate(cfg.layers_block_type) if t == "hybrid"]
    src = dict(layers[hyb[0]].shared_transf.named_parameters())
    bad = []
    for i in hyb[1:]:
        for n, p in layers[i].shared_transf.named_parameters():
            if p is not src[n]:
                bad.append(f"layers.{i}.shared_transf.{n}")
    if model.lm_head.weight is not model.model.embed_tokens.weight:
        bad.append("lm_head.weight")
    return bad


def read_st_header(path):
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            die(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        hdr = json.loads(f.read(n))
    hdr.pop("__metadata__", None)
    return hdr


def list_saved(out_dir):
    """{tensor name: (file name, dtype, shape, nbytes)} for the checkpoint in out_dir."""
    idx_path = os.path.join(out_dir, "model.safetensors.index.json")
    single = os.path.join(out_dir, "model.safetensors")
    if os.path.exists(idx_path):
        with open(idx_path) as f:
            idx = json.load(f)
        files = sorted(set(idx["weight_map"].values()))
    elif os.path.exists(single):
        idx, files = None, ["model.safetensors"]
    else:
        die(f"no model.safetensors(.index.json) in {out_dir}")
    info = {}
    for fn in files:
        for k, v in read_st_header(os.path.join(out_dir, fn)).items():
            if k in info:
                die(f"tensor {k} appears in two shards ({info[k][0]}, {fn})")
            a, b = v["data_offsets"]
            info[k] = (fn, v["dtype"], tuple(v["shape"]), b - a)
    if idx is not None:
        wm = idx["weight_map"]
        if set(wm) != set(info):
            die(f"index weight_map and shard contents differ: only in index {sorted(set(wm) - set(info))[:5]}, "
                f"only in shards {sorted(set(info) - set(wm))[:5]}")
        for k, (fn, *_rest) in info.items():
            if wm[k] != fn:
                die(f"index maps {k} to {wm[k]} but it is stored in {fn}")
    return idx, info


def drop_duplicate_shared(out_dir, keep_layer):
    """Fallback: remove shared_transf copies of layers != keep_layer and lm_head.weight; rewrite the index."""
    from safetensors.torch import load_file, save_file

    idx, info = list_saved(out_dir)
    pat = re.compile(r"^model\.layers\.(\d+)\.shared_transf\.")
    drop = {k for k in info if (pat.match(k) and int(pat.match(k).group(1)) != keep_layer) or k == "lm_head.weight"}
    if not drop:
        return 0
    print(f"  fix-up: removing {len(drop)} duplicate tensors (extra shared_transf copies / lm_head.weight)")
    by_file = {}
    for k in drop:
        by_file.setdefault(info[k][0], []).append(k)
    for fn, keys in sorted(by_file.items()):
        path = os.path.join(out_dir, fn)
        sd = load_file(path)
        for k in keys:
            del sd[k]
        if not sd:
            die(f"fix-up would leave {fn} empty; refusing (re-save with a different max_shard_size)")
        sd = {k: v.contiguous() for k, v in sd.items()}
        save_file(sd, path + ".tmp", metadata={"format": "pt"})
        os.replace(path + ".tmp", path)
        del sd
    if idx is not None:
        for k in drop:
            del idx["weight_map"][k]
        total = 0
        for fn in sorted(set(idx["weight_map"].values())):
            for v in read_st_header(os.path.join(out_dir, fn)).values():
                a, b = v["data_offsets"]
                total += b - a
        idx.setdefault("metadata", {})["total_size"] = total
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump(idx, f, indent=2, sort_keys=True)
            f.write("\n")
    return len(drop)


def verify_saved(out_dir, cfg, n_tensors, n_params):
    idx, info = list_saved(out_dir)
    hyb = [i for i, t in enumerate(cfg.layers_block_type) if t == "hybrid"]
    pat = re.compile(r"^model\.layers\.(\d+)\.shared_transf\.")
    shared_layers = sorted({int(pat.match(k).group(1)) for k in info if pat.match(k)})
    problems = []
    if shared_layers != [hyb[0]]:
        problems.append(f"shared_transf stored for layers {shared_layers}, expected exactly [{hyb[0]}]")
    if "lm_head.weight" in info:
        problems.append("lm_head.weight is present (should be tied to embed_tokens and absent)")
    not_bf16 = [k for k, v in info.items() if v[1] != "BF16"]
    if not_bf16:
        problems.append(f"{len(not_bf16)} tensors are not BF16, e.g. {not_bf16[:3]}")
    if len(info) != n_tensors:
        problems.append(f"{len(info)} tensors saved, expected {n_tensors}")
    nbytes = sum(v[3] for v in info.values())
    if nbytes != 2 * n_params:
        problems.append(f"{nbytes} bytes of tensor data, expected 2 * {n_params} = {2 * n_params}")
    if idx is not None:
        ts = idx.get("metadata", {}).get("total_size")
        if ts is not None and int(ts) != nbytes:
            problems.append(f"index metadata total_size {ts} != {nbytes}")
    for i in hyb:
        k = f"model.layers.{i}.linear.weight"
        if k not in info:
            problems.append(f"missing {k}")
    for i, t in enumerate(cfg.layers_block_type):
        pre = f"model.layers.{i}." + ("mamba_decoder." if t == "hybrid" else "")
        for s in ("input_layernorm.weight", "mamba.in_proj.weight", "mamba.A_log", "mamba.dt_proj_bias"):
            if pre + s not in info:
                problems.append(f"missing {pre + s}")
    if problems:
        die("saved checkpoint failed verification:\n  - " + "\n  - ".join(problems))
    files = sorted({v[0] for v in info.values()})
    return files, nbytes


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output checkpoint folder")
    ap.add_argument("--layers", type=int, default=None, help="override num_hidden_layers (>= 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="fixture-sized dims (hidden 64, 4 heads, dt_rank 4, 13 layers)")
    ap.add_argument("--init", choices=["hf", "fanin"], default="fanin",
                    help="fanin (default): matrices N(0, fan_in^-0.5), embed N(0, 0.5), the fixture's recipe; "
                         "hf: keep HF's init (std 0.02) for the matrices and embeddings (chaotic at 76 layers)")
    ap.add_argument("--embed-std", type=float, default=None,
                    help="re-draw embed_tokens (= lm_head) ~ N(0, this); sets the logit scale "
                         "(default: keep the --init choice: 0.02 for hf, 0.5 for fanin)")
    ap.add_argument("--branch-scale", type=float, default=1.0,
                    help="multiply every mamba out_proj and hybrid linear weight by this (residual-branch "
                         "scaling; < 1 makes a deep random model less chaotic)")
    ap.add_argument("--tokenizer", default=None, help="tokenizer.json to copy into the folder (optional)")
    ap.add_argument("--max-shard-size", default="5GB")
    ap.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out folder")
    args = ap.parse_args()

    if args.embed_std is not None and not args.embed_std > 0:
        die("--embed-std must be > 0")
    if not args.branch_scale > 0:
        die("--branch-scale must be > 0")

    t_start = time.time()
    import numpy as np
    import torch
    import transformers
    from transformers import ZambaForCausalLM

    if not torch.cuda.is_available():
        die("CUDA is not available: this script builds the model on the GPU")
    if args.tokenizer is not None and not os.path.isfile(args.tokenizer):
        die(f"--tokenizer {args.tokenizer}: no such file")

    out = os.path.abspath(args.out)
    if os.path.isdir(out) and os.listdir(out):
        if not args.overwrite:
            die(f"{out} exists and is not empty (pass --overwrite to replace the checkpoint files in it)")
        ours = re.compile(r"^(config\.json|generation_config\.json|tokenizer\.json|model.*\.safetensors(\.tmp)?"
                          r"|model\.safetensors\.index\.json)$")
        others = [f for f in os.listdir(out) if not ours.match(f)]
        if others:
            die(f"--overwrite: {out} holds files this script does not write ({others[:5]}); refusing to touch it")
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.cuda.manual_seed_all(args.seed)

    cfg = build_config(args)
    n_tensors, n_params = expected_counts(cfg)
    hyb = [i for i, t in enumerate(cfg.layers_block_type) if t == "hybrid"]
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, GPU {torch.cuda.get_device_name()}")
    print(f"config: hidden {cfg.hidden_size}, layers {cfg.num_hidden_layers}, hybrid at {hyb}, "
          f"heads {cfg.num_attention_heads} x {cfg.attention_head_dim}, dt_rank {cfg.mamba_dt_rank}, "
          f"init {args.init}, embed std {args.embed_std or ('0.5' if args.init == 'fanin' else 'HF 0.02')}, "
          f"branch scale {args.branch_scale}, seed {args.seed}")

    t0 = time.time()
    with torch.device("cuda"):
        model = ZambaForCausalLM(cfg)
    model.eval()
    torch.cuda.synchronize()
    print(f"built + HF init on cuda (fp32) in {time.time() - t0:.1f} s")

    bad = check_ties(model, cfg)
    if bad:
        print(f"  {len(bad)} parameters not tied after init ({bad[:3]}...); calling model.tie_weights()")
        model.tie_weights()
        bad = check_ties(model, cfg)
        if bad:
            die(f"shared_transf / lm_head are not tied even after tie_weights(): {bad[:5]}")

    n_model = sum(p.numel() for p in model.parameters())  # de-duplicates tied parameters
    if n_model != n_params:
        die(f"model has {n_model} unique parameters, expected {n_params} from ZAMBA.md's shapes")

    t0 = time.time()
    counts = randomise(model, cfg, args.init, args.seed, args.embed_std, args.branch_scale)
    torch.cuda.synchronize()
    L = cfg.num_hidden_layers
    want = {"norm": L + 3, "D": L, "A_log": L, "conv_bias": L, "conv_weight": L, "dt_bias": L, "embed": 1}
    for k, v in want.items():
        if counts[k] != v:
            die(f"randomised {counts[k]} '{k}' tensors, expected {v} (counts {counts})")
    if args.branch_scale != 1.0 and counts["branch_out"] != L + len(hyb):
        die(f"scaled {counts['branch_out']} out_proj/linear weights, expected {L + len(hyb)}")
    print(f"randomised in {time.time() - t0:.1f} s: {counts}")

    model.to(torch.bfloat16)
    model.to("cpu")
    bad = check_ties(model, cfg)
    if bad:
        die(f"ties lost by the bf16/cpu cast: {bad[:5]}")
    torch.cuda.empty_cache()

    t0 = time.time()
    model.save_pretrained(out, max_shard_size=args.max_shard_size)
    print(f"save_pretrained in {time.time() - t0:.1f} s")
    n_fixed = drop_duplicate_shared(out, hyb[0])
    files, nbytes = verify_saved(out, cfg, n_tensors, n_params)

    # Spot-check that the stored shared block is the model's (bf16, bit-exact).
    from safetensors import safe_open

    key = f"model.layers.{hyb[0]}.shared_transf.self_attn.q_proj.weight"
    fn = list_saved(out)[1][key][0]
    with safe_open(os.path.join(out, fn), framework="pt") as f:
        stored = f.get_tensor(key)
    if not torch.equal(stored, model.model.layers[hyb[-1]].shared_transf.self_attn.q_proj.weight.detach()):
        die(f"{key} in {fn} differs from the model's shared q_proj")

    if args.tokenizer is not None:
        shutil.copyfile(args.tokenizer, os.path.join(out, "tokenizer.json"))

    with open(os.path.join(out, "config.json")) as f:
        saved_cfg = json.load(f)
    if saved_cfg.get("layers_block_type") != list(cfg.layers_block_type):
        die(f"config.json layers_block_type differs from the model's: {saved_cfg.get('layers_block_type')}")

    print(f"wrote {out}: {len(files)} file(s) {files}, {n_tensors} tensors, {nbytes:,} bytes"
          + (f" (fix-up removed {n_fixed} duplicates)" if n_fixed else ""))
    print(f"parameters: {n_params:,} unique (shared block once, lm_head tied)")
    print(f"elapsed: {time.time() - t_start:.1f} s")


if __name__ == "__main__":
    main()
