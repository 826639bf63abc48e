#!/usr/bin/env bash
# Issue 8 on a 2-GPU host (the exact command whose output is committed under benchmarks/results/<gpu>x2/):
#   bash benchmarks/run_multi_gpu.sh OUTDIR
# NVLink multicast stays off. Needs torch with NCCL; runs from a source checkout (PYTHONPATH=src).
set -euo pipefail
R=${1:?usage: run_multi_gpu.sh OUTDIR}
mkdir -p "$R"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$R/gpus.txt"
# 1. TP decoder: TP=1 writes the reference logits, TP=2 compares with them
torchrun --nproc-per-node 1 benchmarks/tp_decoder.py --out "$R" 2>&1 | grep -v Warning | tail -12
torchrun --nproc-per-node 2 benchmarks/tp_decoder.py --out "$R" 2>&1 | grep -v Warning | tail -12
# 3. distributed audit of an 8-shard FP8 checkpoint, 1 process vs 2 ranks (NCCL), wall clock of each
python benchmarks/make_sharded_checkpoint.py /tmp/ckpt8 --shards 8 --layers 16
t0=$(date +%s.%N)
python -m blockfp8 audit /tmp/ckpt8 --device cuda --json "$R/audit_1proc.json" --no-progress > "$R/audit_1proc.log" 2>&1
t1=$(date +%s.%N)
torchrun --nproc-per-node 2 -m blockfp8 audit /tmp/ckpt8 --device cuda --json "$R/audit_2rank.json" --no-progress \
  > "$R/audit_2rank.log" 2>&1
t2=$(date +%s.%N)
python benchmarks/compare_audit_reports.py "$R/audit_1proc.json" "$R/audit_2rank.json" | tee "$R/audit_compare.txt"
python - "$t0" "$t1" "$t2" <<'PY' | tee -a "$R/audit_compare.txt"
import sys
t0, t1, t2 = map(float, sys.argv[1:])
print(f"audit wall clock: 1 process {t1 - t0:.1f} s, 2 ranks {t2 - t1:.1f} s, speed-up {(t1 - t0) / (t2 - t1):.2f}x")
PY
