#!/usr/bin/env bash
# One build-check-measure cycle on a GPU machine (the command in benchmarks/results/<gpu>/COMMAND.md).
# Usage: OUT=<dir> bash benchmarks/run_gpu.sh [stages...]   stages: test tune gemm quant moe model (default: all)
set -o pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/blockfp8_out}
mkdir -p "$OUT"
STAGES=${*:-test tune gemm quant moe model}
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"
for s in $STAGES; do
  echo "=== $s ($(date +%T))"
  case $s in
    diag) python3 benchmarks/diag_quant.py 2>&1 | tee "$OUT/diag_quant.log" ;;
    test) timeout 540 python3 -m pytest -q -m gpu tests/ 2>&1 | tail -40 | tee "$OUT/gpu_tests.log" ;;
    tune) python3 -m blockfp8 tune --out-dir src/blockfp8/data/tuned 2>&1 | tee "$OUT/tune.log" | grep -E "^M=|compile failed|wrote" | tail -50
          cp src/blockfp8/data/tuned/*.json "$OUT/" ;;
    tune_qwen) python3 -m blockfp8 tune --nk 6144x4096,4096x4096,24576x4096,4096x12288 --m 1,16,64,128,512,4096 \
          --out-dir src/blockfp8/data/tuned 2>&1 | tee "$OUT/tune_qwen.log" | grep -E "^M=|compile failed|wrote" | tail -30
          cp src/blockfp8/data/tuned/*.json "$OUT/" ;;
    gemm) python3 -m blockfp8 bench gemm --out-dir "$OUT" --reps 50 2>&1 | tee "$OUT/gemm.log" | tail -60 ;;
    quant) python3 -m blockfp8 bench quant --out-dir "$OUT" --reps 30 2>&1 | tail -20 ;;
    moe) python3 -m blockfp8 bench moe --out-dir "$OUT" --reps 20 2>&1 | tail -20 ;;
    model) python3 -m blockfp8 bench model --out-dir "$OUT" --reps 10 2>&1 | tail -20 ;;
  esac
done
