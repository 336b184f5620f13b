"""Key-by-key diff of two metrics/ folders (e.g. two fresh-clone `dvc repro` runs), file by file.

Usage: python tools/compare_metrics.py BEFORE/metrics AFTER/metrics
Numbers within 1e-6 relative count as equal; each moved key is printed with both values.
"""

import json
import math
import sys
from pathlib import Path


def same(v, w) -> bool:
    if isinstance(v, float) and isinstance(w, float) and math.isnan(v) and math.isnan(w):
        return True
    return abs(v - w) <= 1e-6 * max(1.0, abs(v))


def main(before: Path, after: Path) -> None:
    for f in sorted(before.glob("*.json")):
        g = after / f.name
        if not g.exists():
            print(f"{f.name}: missing in {after}")
            continue
        a, b = json.loads(f.read_text()), json.loads(g.read_text())
        equal = moved = 0
        for key, v in a.items():
            w = b.get(key)
            if not (isinstance(v, (int, float)) and isinstance(w, (int, float))):
                continue
            if same(v, w):
                equal += 1
            else:
                moved += 1
                print(f"  {f.name} {key}: {v} -> {w}")
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        print(f"{f.name}: {equal} equal, {moved} moved, only before {only_a}, only after {only_b}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
