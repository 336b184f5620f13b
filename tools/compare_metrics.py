"""Key-by-key diff of two metrics/ folders (e.g. two fresh-clone `dvc repro` runs): equal / moved / only-one-side per file.

Usage: python tools/compare_metrics.py BEFORE/metrics AFTER/metrics  (values within 1e-6 relative count as equal)."""
import json, sys, math
from pathlib import Path
a, b = Path(sys.argv[1]), Path(sys.argv[2])
for f in sorted(a.glob("*.json")):
    g = b / f.name
    if not g.exists():
        print(f"{f.name}: missing in {b}"); continue
    A, B = json.loads(f.read_text()), json.loads(g.read_text())
    same = moved = 0
    for k, v in A.items():
        if k not in B:
            continue
        w = B[k]
        if isinstance(v, (int, float)) and isinstance(w, (int, float)):
            if v == w or (isinstance(v, float) and math.isnan(v) and isinstance(w, float) and math.isnan(w)):
                same += 1
            elif abs(v - w) <= 1e-6 * max(1, abs(v)):
                same += 1
            else:
                moved += 1
                print(f"  {f.name} {k}: {v} -> {w}")
    only_a = sorted(set(A) - set(B)); only_b = sorted(set(B) - set(A))
    print(f"{f.name}: {same} equal, {moved} moved, {len(only_a)} only-before {only_a[:6]}, {len(only_b)} only-after {only_b[:6]}")
