#!/usr/bin/env python3
"""Reads `ncu --csv --metrics gpu__time_duration.sum` output (stdin) and prints, per kernel name,
the number of launches, total and mean µs and share of the total. Used by
`scripts/gpu_check.sh profile`."""
import csv
import sys
from collections import defaultdict

lines = [l for l in sys.stdin if l.startswith('"')]
if not lines:
    print("no ncu rows")
    sys.exit(0)
rows = list(csv.DictReader(lines))
agg = defaultdict(lambda: [0, 0.0])
for r in rows:
    if r.get("Metric Name") != "gpu__time_duration.sum":
        continue
    v = float(r["Metric Value"].replace(",", ""))
    unit = r.get("Metric Unit", "nsecond")
    ns = v * {"nsecond": 1, "usecond": 1e3, "msecond": 1e6, "second": 1e9}.get(unit, 1)
    name = r["Kernel Name"].split("(")[0][:60]
    grid = r.get("Grid Size", "")
    a = agg[(name, grid)]
    a[0] += 1
    a[1] += ns
total = sum(a[1] for a in agg.values())
print(f"{'kernel':60s} {'grid':>16s} {'calls':>6s} {'total µs':>9s} {'mean µs':>8s} {'share':>6s}")
for (name, grid), (n, ns) in sorted(agg.items(), key=lambda kv: -kv[1][1])[:45]:
    print(f"{name:60s} {grid:>16s} {n:6d} {ns / 1e3:9.1f} {ns / n / 1e3:8.2f} {100 * ns / total:5.1f}%")
print(f"all kernels: {total / 1e3:.1f} µs")
