"""Paired comparison of any two variants of a `blockfp8 eval --json` result (the eval compares every variant with
its config's baseline only): McNemar on the items, paired-bootstrap intervals of the accuracy and word-perplexity
differences, with the run's own bootstrap settings.

    PYTHONPATH=src python benchmarks/eval_pair.py RESULT.json BASELINE VARIANT
"""

import argparse
import json
from types import SimpleNamespace

from blockfp8.eval.runner import compare

p = argparse.ArgumentParser()
p.add_argument("result")
p.add_argument("baseline")
p.add_argument("variant")
args = p.parse_args()
data = json.load(open(args.result))
config = data.get("config", {})
cfg = SimpleNamespace(bootstrap_samples=int(config.get("bootstrap_samples", 2000)), seed=int(config.get("seed", 0)))
variants = data["variants"]
for name in (args.baseline, args.variant):
    if name not in variants:
        raise SystemExit(f"{args.result}: no variant {name!r}; variants: {', '.join(variants)}")
out = compare(variants[args.baseline], variants[args.variant], args.baseline, args.variant, cfg)
mc, acc = out["mcnemar"], out["bootstrap_accuracy"]
print(f"{args.variant} vs {args.baseline}: accuracy {100 * out['accuracy_diff']:+.2f} pp "
      f"[{100 * acc['diff_ci'][0]:+.2f}, {100 * acc['diff_ci'][1]:+.2f}], McNemar p {mc['p_value']:.3f} "
      f"({mc['only_a_correct']} items only {args.baseline} right, {mc['only_b_correct']} only {args.variant})")
if "bootstrap_perplexity" in out:
    ppl = out["bootstrap_perplexity"]
    print(f"  word perplexity {ppl['a']:.3f} -> {ppl['b']:.3f}: {ppl['diff']:+.3f} "
          f"[{ppl['diff_ci'][0]:+.3f}, {ppl['diff_ci'][1]:+.3f}]")
