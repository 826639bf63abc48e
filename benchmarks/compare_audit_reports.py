"""Compare two audit JSON reports apart from their `run` section (timings, ranks, threads).

Prints whether they are bit-identical, and whether they agree to 1e-12 relative in every number: on CPU the
float64 norms are summed in an order that depends on the thread count (torchrun starts workers with one thread),
which can move the last ulp. Exit 0 when they agree to 1e-12.
"""

import json
import math
import sys


def load(path):
    with open(path) as f:
        report = json.load(f)
    report.pop("run", None)
    return report


def close(a, b, rel=1e-12):
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=rel)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    return a == b


a, b = load(sys.argv[1]), load(sys.argv[2])
print(f"layers: {len(a.get('layers', []))}; bit-identical (excluding 'run'): {a == b}; "
      f"equal to 1e-12 relative: {close(a, b)}")
sys.exit(0 if close(a, b) else 1)
