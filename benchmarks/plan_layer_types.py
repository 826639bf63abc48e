"""Which layers' scale format moves LAMBADA's target words? Scores LAMBADA items (log-probability of the target
word, and whether every target token is the greedy choice) with the audit's simulator
(``audit.e2e.FP8Simulator``: reference quantization of weights and activations, float32 model) for all-float32,
all-UE8M0, and UE8M0 with one group of layers (by module name) on float32 scales; optionally the plans of audit
reports, each also with its MLP formats grouped per block (``<name>_mlp_grouped``: a block whose gate, up or down
projection the plan keeps on float32 scales keeps all three there) and without its ``down_proj`` layers
(``<name>_no_down``). Each variant is compared with all-UE8M0, paired per item (bootstrap 95% interval of the
mean difference in log-probability; McNemar's exact p on the greedy hits).

Items are batched right-padded: a causal model's real positions never see the padding, and activation quantization
is per token, so the padding changes no real position's numbers.

Usage: PYTHONPATH=src python benchmarks/plan_layer_types.py [--items 5153] [--device cuda]
           [--groups all|none|k_proj,q_proj,...] [--report NAME=REPORT.json ...] [--json out.json]
"""

import argparse
import json
import re

import numpy as np
import torch

from blockfp8.audit.e2e import FP8Simulator
from blockfp8.datasets import load_lambada
from blockfp8.eval.stats import mcnemar_exact_p
from blockfp8.models import load_causal_lm

GROUPS = {  # variant -> regex over module names of the layers kept on float32 scales (the rest UE8M0)
    "k_proj": r"\.k_proj$", "q_proj": r"\.q_proj$", "v_proj": r"\.v_proj$", "o_proj": r"\.o_proj$",
    "q+k": r"\.(q|k)_proj$", "q+k+v": r"\.(q|k|v)_proj$", "attention": r"\.(q|k|v|o)_proj$",
    "down_proj": r"\.down_proj$", "gate+up": r"\.(gate|up)_proj$", "mlp": r"\.(gate|up|down)_proj$",
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=5153)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--report", action="append", default=[], metavar="NAME=REPORT.json")
    p.add_argument("--groups", default="all", help="layer groups to score: all, none, or a comma list of GROUPS")
    p.add_argument("--json")
    args = p.parse_args()
    model, tok = load_causal_lm("smollm2", dtype="float32")
    model.to(args.device).eval()
    items = []
    for item in load_lambada()[: args.items]:  # the continuation as the eval scores it: " " + target
        a = tok(item.context, return_tensors="pt").input_ids[0]
        b = tok(" " + item.target, add_special_tokens=False, return_tensors="pt").input_ids[0]
        items.append((a, b))
    sim = FP8Simulator(model)
    names = [n for n, _ in sim.modules]
    variants = {"float32": None, "ue8m0": []}
    groups = GROUPS if args.groups == "all" else {} if args.groups == "none" else {
        g: GROUPS[g] for g in args.groups.split(",")}
    variants.update({g: [n for n in names if re.search(rx, n)] for g, rx in groups.items()})
    for spec in args.report:
        name, path = spec.split("=", 1)
        plan = json.load(open(path))["plan"]["float32_layers"]
        variants[name] = plan
        mlp_blocks = {n.rsplit(".mlp.", 1)[0] for n in plan if ".mlp." in n}
        variants[f"{name}_mlp_grouped"] = [n for n in names if n in plan or (
            ".mlp." in n and n.rsplit(".mlp.", 1)[0] in mlp_blocks)]
        variants[f"{name}_no_down"] = [n for n in plan if not n.endswith(".down_proj")]

    def score(context) -> tuple[np.ndarray, np.ndarray]:
        logp, hit = [], []
        with torch.no_grad(), context:
            for i in range(0, len(items), args.batch):
                chunk = items[i : i + args.batch]
                seqs = [torch.cat([a, b]) for a, b in chunk]
                width = max(len(s) for s in seqs)
                x = torch.zeros((len(seqs), width), dtype=torch.long)
                for j, s in enumerate(seqs):
                    x[j, : len(s)] = s
                lp_all = torch.log_softmax(model(input_ids=x.to(args.device)).logits.float(), -1).cpu()
                for j, (a, b) in enumerate(chunk):
                    lp = lp_all[j, len(a) - 1 : len(a) + len(b) - 1]
                    logp.append(float(lp.gather(1, b[:, None]).sum()))
                    hit.append(bool((lp.argmax(-1) == b).all()))
        return np.array(logp), np.array(hit)

    results = {}
    for name, layers in variants.items():
        context = sim.active("float32") if layers is None else sim.active_plan(layers)
        results[name] = score(context)
        print(f"scored {name} ({'all' if layers is None else len(layers)} float32 layers)", flush=True)
    lp8, hit8 = results["ue8m0"]
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(items), size=(2000, len(items)))
    rows = []
    for name, (lp, hit) in results.items():
        d = lp - lp8
        boot = d[idx].mean(1)
        rows.append({"variant": name, "float32_layers": "all" if variants[name] is None else len(variants[name]),
                     "mean_logp": float(lp.mean()), "accuracy": float(hit.mean()),
                     "dlogp_vs_ue8m0": float(d.mean()),
                     "dlogp_ci": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
                     "dacc_pp_vs_ue8m0": 100 * float(hit.mean() - hit8.mean()),
                     "mcnemar_p": mcnemar_exact_p(int((hit & ~hit8).sum()), int((~hit & hit8).sum()))})
    print(f"{len(items)} LAMBADA items, simulator, paired against all-UE8M0 (log p: natural log of the target word)")
    print(f"{'variant':12s} {'f32 layers':>10s} {'mean log p':>10s} {'acc %':>6s} {'d log p vs ue8m0 [95% CI]':>30s} "
          f"{'d acc pp':>8s} {'McNemar p':>9s}")
    for r in rows:
        print(f"{r['variant']:12s} {r['float32_layers']!s:>10s} {r['mean_logp']:10.4f} {100 * r['accuracy']:6.2f} "
              f"{r['dlogp_vs_ue8m0']:+10.4f} [{r['dlogp_ci'][0]:+.4f}, {r['dlogp_ci'][1]:+.4f}] "
              f"{r['dacc_pp_vs_ue8m0']:+8.2f} {r['mcnemar_p']:9.3g}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"items": len(items), "device": args.device, "torch": torch.__version__, "rows": rows}, f,
                      indent=1)


if __name__ == "__main__":
    main()
