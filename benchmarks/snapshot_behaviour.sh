#!/usr/bin/env bash
# A behaviour snapshot of one source tree, for before/after comparisons of a change that must not alter results:
# `audit` on a generated checkpoint (and a refused --block), `explain --json` for several planned GPUs and model
# types (also fed the audit report, and from the checkpoint), and `check` on the embedded SmolLM2 (CPU).
# Usage: [SRC=<src folder of the tree to run, default the installed package>] [PY=python] \
#          bash benchmarks/snapshot_behaviour.sh OUTDIR
# Compare two snapshots with benchmarks/compare_audit_reports.py (report.json) and diff (the rest).
set -uo pipefail
OUT=$(realpath -m "${1:?OUTDIR}")
PY=${PY:-python3}
export PYTHONPATH=${SRC:+$(realpath "$SRC")}
mkdir -p "$OUT"; : > "$OUT/rc"
cd /tmp
if $PY -c "import blockfp8.testing.synthetic" 2>/dev/null; then MOD=blockfp8.testing.synthetic; else MOD=blockfp8.audit.synthetic; fi
rm -rf "$OUT/ckpt"
$PY -m $MOD "$OUT/ckpt" --shapes 1024x1024,512x1024,1024x384,640x512 --kind outlier > "$OUT/ckpt.log" 2>&1
$PY -m blockfp8 audit "$OUT/ckpt" --report "$OUT/audit" --no-progress > "$OUT/audit.txt" 2>&1; echo "audit rc $?" >> "$OUT/rc"
$PY -m blockfp8 audit "$OUT/ckpt" --report "$OUT/audit_blk" --block 64,64 --no-progress > "$OUT/audit_blk.txt" 2>&1
echo "audit --block 64,64 rc $?" >> "$OUT/rc"
for a in sm_90 sm_100 sm_89 sm_120; do
  for mt in qwen3_5_text llama; do
    BLOCKFP8_ARCH=$a $PY -m blockfp8 explain --model-type $mt --json > "$OUT/explain_${a}_${mt}.json" 2>&1
    echo "explain $a $mt rc $?" >> "$OUT/rc"
  done
done
BLOCKFP8_ARCH=sm_100 $PY -m blockfp8 explain --model-type llama --audit "$OUT/audit/report.json" --json \
  > "$OUT/explain_audit.json" 2>&1; echo "explain --audit rc $?" >> "$OUT/rc"
BLOCKFP8_ARCH=sm_100 $PY -m blockfp8 explain --checkpoint "$OUT/ckpt" > "$OUT/explain_ckpt.txt" 2>&1
echo "explain --checkpoint rc $?" >> "$OUT/rc"
$PY -m blockfp8 check --out "$OUT/check" --no-progress > "$OUT/check.txt" 2>/dev/null; echo "check rc $?" >> "$OUT/rc"
