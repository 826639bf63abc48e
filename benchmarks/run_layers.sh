#!/usr/bin/env bash
# blockfp8's own kernels on one Hopper GPU, without DeepGEMM: the GPU tests, then the whole-layer benchmark over the
# DeepSeek-V3 grid and shapes of other model families (Llama-3-70B, Qwen3-8B, gpt-oss's ragged 2880, and the three
# shapes the shipped tables hold out: 4096x12288, 8192x8192, 5120x2880).
# Usage, from the repository root: OUT=<dir> bash benchmarks/run_layers.sh [test] [layer]   (default: both)
# The `cute` variant needs `pip install 'blockfp8[cute]'` (it is skipped, with the reason logged, without it).
# (VARIANTS, MS and MODES override the bench variants, token counts and timing modes.)
set -o pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/blockfp8_out}
mkdir -p "$OUT"
DEEPSEEK=2112x7168,576x7168,24576x1536,32768x512,7168x16384,4096x7168,7168x2048
OTHERS=10240x8192,8192x28672,6144x4096,2880x2880,4096x12288,8192x8192,5120x2880
VARIANTS=${VARIANTS:-bf16,scaled_mm,cute,triton,auto}
MS=${MS:-1,16,64,128,256,512,4096}
MODES=${MODES:-chain,graph}
for s in ${*:-test layer}; do
  echo "=== $s ($(date +%T))"
  case $s in
    test) timeout 400 python3 -m pytest -q -m gpu tests/kernels/test_ops.py tests/kernels/test_cute_gemm.py \
        tests/kernels/test_triton_gemm_and_quant.py tests/nn/test_linear.py tests/nn/test_compile.py 2>&1 | tail -15 \
        | tee "$OUT/gpu_tests.log" ;;
    layer) for group in DEEPSEEK OTHERS; do
        python3 -m blockfp8 bench layer --nk "${!group}" --m "$MS" --variants "$VARIANTS" \
          --modes "$MODES" --reps 20 --out-dir "$OUT" --json "$OUT/layer_summary_$group.json" \
          > "$OUT/layer_$group.log" 2>&1
        echo "$group rc $?"; grep -v "^\[N=" "$OUT/layer_$group.log" | tail -3
      done
      python3 benchmarks/layer_summary.py "$OUT/layer.csv" ;;
  esac
done
