#!/usr/bin/env python3
"""Times the prefill GEMMs of Zamba-7B through PyTorch (cuBLASLt) on the GPU machine, to compare
with the cuBLAS kernels our engine gets (ncu, `gpu_check.sh profile-prefill`). Prints TFLOP/s per
shape: y[M, N] = x[M, K] · w[N, K]ᵀ in bf16 with fp32 accumulation, as F.linear does it."""
import sys
import torch
import torch.nn.functional as F

SHAPES = {  # name: (N, K)
    "in_proj": (14848, 3712),
    "out_proj": (3712, 7424),
    "qkv": (22272, 7424),
    "o_proj/linear": (3712, 3712),
    "gate_up": (29696, 3712),
    "down": (3712, 14848),
}
torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
for m in [int(a) for a in sys.argv[1:]] or [512, 2048]:
    for name, (n, k) in SHAPES.items():
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            F.linear(x, w)
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        reps = 20
        a.record()
        for _ in range(reps):
            F.linear(x, w)
        b.record()
        torch.cuda.synchronize()
        us = a.elapsed_time(b) * 1e3 / reps
        print(f"M {m:5d} {name:14s} N {n:6d} K {k:6d}: {us:8.1f} us  {2 * m * n * k / us / 1e6:6.1f} TFLOP/s")
