#!/usr/bin/env bash
# Build DeepGEMM from source, then test and measure blockfp8 with it, on one Hopper or Blackwell GPU.
# Usage: DG_SRC=<DeepGEMM source tree> OUT=<dir> bash benchmarks/run_deepgemm.sh [stages...]
#   DG_SRC: a DeepGEMM checkout with third-party/cutlass/include and third-party/fmt/include (docs/kernels.md
#   says which commits); the build goes to $DG_SITE (default /tmp/dgsite), outside the repository.
#   stages: build wait test moe layer (default: all). `build` starts the ~90 s compile in the background,
#   `wait` waits for it, so other GPU work can run in between.
set -o pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/blockfp8_out}
DG_SITE=${DG_SITE:-/tmp/dgsite}
mkdir -p "$OUT"
STAGES=${*:-build wait test moe layer}
# layer: the DeepSeek-V3 grid and the other families of benchmarks/run_layers.sh, timed in `chain` mode
NK=2112x7168,576x7168,24576x1536,32768x512,7168x16384,4096x7168,7168x2048,10240x8192,8192x28672,6144x4096,\
2880x2880,4096x12288,8192x8192,5120x2880
# DeepGEMM's JIT must see the libstdc++ the extension was built against (else a segfault in its include parser).
LIBSTDCXX=$(ls /usr/lib/x86_64-linux-gnu/libstdc++.so.6 2>/dev/null)
with_dg() { PYTHONPATH=$DG_SITE:$PYTHONPATH LD_PRELOAD=$LIBSTDCXX "$@"; }
for s in $STAGES; do
  echo "=== $s ($(date +%T))"
  case $s in
    build) mkdir -p "$DG_SITE"; rm -f /tmp/dg_build.rc
      (cd "$DG_SRC" && setsid nohup bash -c "MAX_JOBS=12 python3 -m pip install --no-build-isolation --no-deps \
         --target $DG_SITE . > /tmp/dg_build.log 2>&1; echo \$? > /tmp/dg_build.rc" >/dev/null 2>&1 </dev/null &) ;;
    wait) while [ ! -f /tmp/dg_build.rc ]; do sleep 5; done
      echo "build rc $(cat /tmp/dg_build.rc)"; tail -3 /tmp/dg_build.log; cp /tmp/dg_build.log "$OUT/"
      with_dg python3 -m blockfp8 env | tee "$OUT/env.txt" ;;
    test) with_dg timeout 500 python3 -m pytest -q -m gpu tests/kernels/test_deepgemm_gpu.py tests/nn/test_moe.py \
        2>&1 | tail -30 | tee "$OUT/gpu_tests.log" ;;
    moe) with_dg python3 -m blockfp8 bench moe --variants bf16,triton,deepgemm,auto,deepgemm_masked,deepgemm_contiguous \
        --modes graph --reps 20 --out-dir "$OUT" 2>&1 | tail -24 ;;
    layer) with_dg python3 -m blockfp8 bench layer --nk "$NK" --m 1,16,64,128,512,4096 \
        --variants "${VARIANTS:-scaled_mm,deepgemm}" --reps 20 --out-dir "$OUT" 2>&1 | tail -12 ;;
  esac
done
