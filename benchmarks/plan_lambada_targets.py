"""Does a per-layer plan that is good on held-out text also hold on LAMBADA's target words? Scores the first N
LAMBADA items (mean log-probability of the target word, and how many targets are the greedy choice) with the
audit's simulator (``audit.e2e.FP8Simulator``: reference quantization of weights and activations, float32 model)
for all-float32, all-UE8M0 and the plan of an audit report, plus two variants of the plan: its attention
q/k/v projections kept together (a block's q, k, v all on float32 scales when any is) and the plan without q/k/v.

Usage: PYTHONPATH=src python benchmarks/plan_lambada_targets.py --report REPORT.json [--items 150]
"""

import argparse
import json
import re

import torch

from blockfp8.audit.e2e import FP8Simulator
from blockfp8.datasets import load_lambada
from blockfp8.models import load_causal_lm

p = argparse.ArgumentParser()
p.add_argument("--report", required=True)
p.add_argument("--items", type=int, default=150)
p.add_argument("--variants", default="float32,ue8m0,plan,plan_qkv_together,plan_without_qkv")
args = p.parse_args()
plan = json.load(open(args.report))["plan"]["float32_layers"]
model, tok = load_causal_lm("smollm2", dtype="float32")
items = [(tok(item.context, return_tensors="pt").input_ids,
          tok(" " + item.target, add_special_tokens=False, return_tensors="pt").input_ids)
         for item in load_lambada()[: args.items]]  # the continuation as the eval scores it: " " + target

def score() -> tuple[float, int]:
    total, correct = 0.0, 0
    with torch.no_grad():
        for a, b in items:
            lp = torch.log_softmax(model(torch.cat([a, b], 1)).logits[0, a.shape[1] - 1 : -1].float(), -1)
            total += lp.gather(1, b[0][:, None]).sum().item()
            correct += int((lp.argmax(-1) == b[0]).all())
    return total / len(items), correct


qkv = re.compile(r"(model\.layers\.\d+)\.self_attn\.[qkv]_proj$")
blocks = {m.group(1) for n in plan if (m := qkv.match(n))}
plans = {"plan": set(plan), "plan_qkv_together": set(plan) | {f"{b}.self_attn.{x}_proj" for b in blocks for x in "qkv"},
         "plan_without_qkv": {n for n in plan if not qkv.match(n)}}
sim = FP8Simulator(model)
print(f"{len(items)} LAMBADA items; plan: {len(plan)} float32 layers ({args.report})")
for name in args.variants.split(","):
    ctx = sim.active(name) if name in ("float32", "ue8m0") else sim.active_plan(plans[name])
    with ctx:
        mean_lp, correct = score()
    layers = "" if name in ("float32", "ue8m0") else f" ({len(plans[name])} float32 layers)"
    print(f"{name}{layers}: mean log p(target) {mean_lp:.4f}, greedy targets {correct}/{len(items)}", flush=True)
