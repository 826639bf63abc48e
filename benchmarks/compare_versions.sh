#!/usr/bin/env bash
# Same run, same GPU: `blockfp8 bench gemm` for two source trees, interleaved A B A B, then a table of per-cell
# speed ratios (B over A) next to the run-to-run noise of each tree (A1 vs A2, B1 vs B2). For showing that a change
# which should not touch the kernels leaves their speed alone.
# Usage: OUT=<dir> bash benchmarks/compare_versions.sh OLD_SRC [NEW_SRC] [-- extra `bench gemm` flags]
# OLD_SRC / NEW_SRC are `src` folders (e.g. from `git worktree add /tmp/old <commit>`); NEW_SRC defaults to ./src.
set -euo pipefail
OLD=$(realpath "${1:?OLD_SRC}"); shift
NEW=$(realpath src)
if [[ $# -gt 0 && $1 != "--" ]]; then NEW=$(realpath "$1"); shift; fi
[[ ${1:-} == "--" ]] && shift
OUT=${OUT:-/tmp/blockfp8_compare}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
for run in A1 B1 A2 B2; do
  src=$OLD; [[ $run == B* ]] && src=$NEW
  echo "=== $run: $src ($(date +%T))"
  rm -rf "$OUT/$run"
  PYTHONPATH=$src python3 -m blockfp8 bench gemm --out-dir "$OUT/$run" --no-plot "$@" > "$OUT/$run.log" 2>&1 \
    || { tail -20 "$OUT/$run.log"; exit 1; }
done
python3 - "$OUT" <<'PY'
import csv, math, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
def load(run):
    rows = csv.DictReader(open(next((out / run).glob("*.csv"))))
    return {(r["m"], r["n"], r["k"], r["variant"]): float(r["us"]) for r in rows if r["us"] not in ("", "nan")}
runs = {r: load(r) for r in ("A1", "B1", "A2", "B2")}
keys = sorted(set.intersection(*(set(v) for v in runs.values())), key=lambda k: (k[3], int(k[1]), int(k[2]), int(k[0])))
def ratios(x, y): return [runs[y][k] / runs[x][k] for k in keys]
def gm(v): return math.exp(statistics.fmean(math.log(x) for x in v))
lines = ["time B/A (>1: B slower)\nvariant  cells  B/A geomean  B/A min  B/A max  noise A1/A2 max|dev|  noise B1/B2 max|dev|"]
for variant in sorted({k[3] for k in keys}):
    ks = [k for k in keys if k[3] == variant]
    ba = [(runs["B1"][k] + runs["B2"][k]) / (runs["A1"][k] + runs["A2"][k]) for k in ks]
    na = max(abs(runs["A2"][k] / runs["A1"][k] - 1) for k in ks)
    nb = max(abs(runs["B2"][k] / runs["B1"][k] - 1) for k in ks)
    lines.append(f"{variant:8s} {len(ks):5d}  {gm(ba):11.3f}  {min(ba):7.3f}  {max(ba):7.3f}  {na:20.3f}  {nb:20.3f}")
text = "\n".join(lines)
(out / "compare.txt").write_text(text + "\n")
print(text)
PY
