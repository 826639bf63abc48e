"""Which layers' scale format moves LAMBADA's target words? Scores LAMBADA items (log-probability of the target
word, and whether every target token is the greedy choice) with the audit's simulator
(``audit.e2e.FP8Simulator``: reference quantization of weights and activations, float32 model) for all-float32,
all-UE8M0, and UE8M0 with one group of layers (by module name) on float32 scales; optionally the plans of audit
reports, each also with its MLP formats grouped per block (``<name>_mlp_grouped``: a block whose gate, up or down
projection the plan keeps on float32 scales keeps all three there) and without its ``down_proj`` layers
(``<name>_no_down``), and with each block's attention formats grouped (``<name>_attn_grouped``). Each variant is
compared with all-UE8M0, paired per item (bootstrap 95% interval of the mean difference in log-probability;
McNemar's exact p on the greedy hits). Each variant also gets its share of the GEMM FLOPs on UE8M0 and its KL
divergence to the unquantized model on the same items, over every position and at the positions that predict the
target word, as a share of all-UE8M0's increase over all-float32 (the plan tolerance's measure, ``audit.scale_plan``)
with a paired bootstrap interval.

Items are batched right-padded: a causal model's real positions never see the padding, and activation quantization
is per token, so the padding changes no real position's numbers.

Usage: PYTHONPATH=src python benchmarks/plan_layer_types.py [--items 5153] [--device cuda]
           [--groups all|none|k_proj,q_proj,...] [--deadline S]
           [--report NAME=REPORT.json|LAYERS.json ...] [--jitter-seeds S,..] [--exact-max-seeds S,..]
           [--split-formats] [--json out.json]
       PYTHONPATH=src python benchmarks/plan_layer_types.py --correlate out1.json out2.json ...
"""

import argparse
import contextlib
import functools
import json
import re
import time

import numpy as np
import torch

from blockfp8.audit.e2e import FP8Simulator, rerounded_weight
from blockfp8.datasets import load_lambada
from blockfp8.eval.stats import mcnemar_exact_p
from blockfp8.models import load_causal_lm
from blockfp8.quant import reference as ref

GROUPS = {  # variant -> regex over module names of the layers kept on float32 scales (the rest UE8M0)
    "k_proj": r"\.k_proj$", "q_proj": r"\.q_proj$", "v_proj": r"\.v_proj$", "o_proj": r"\.o_proj$",
    "q+k": r"\.(q|k)_proj$", "q+k+v": r"\.(q|k|v)_proj$", "attention": r"\.(q|k|v|o)_proj$",
    "k+v": r"\.(k|v)_proj$", "down_proj": r"\.down_proj$", "gate+up": r"\.(gate|up)_proj$",
    "mlp": r"\.(gate|up|down)_proj$",
    "first2": r"\.layers\.(0|1)\.", "last2": r"\.layers\.(28|29)\.",  # SmolLM2's 30 blocks: the two at each end
}


def grouped(plan: list[str], names: list[str], part: str) -> list[str]:
    """``plan`` plus, in every block where it keeps one ``.<part>.`` projection on float32 scales, all of them."""
    blocks = {n.rsplit(f".{part}.", 1)[0] for n in plan if f".{part}." in n}
    return [n for n in names if n in plan or (f".{part}." in n and n.rsplit(f".{part}.", 1)[0] in blocks)]


def jittered_weight(w: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``ref.quantize_weight(w, (128, 128), "float32")`` with each block's scale times 1 + U[0, 1/16): float32
    scales' precision, another rounding of every value, the block's largest value no longer exact."""
    n, k = w.shape
    scale = ref.quantize_weight(w, (128, 128), "float32")[1]
    scale = scale * (1 + torch.rand(scale.shape, generator=gen) / 16).to(scale.device)
    full = scale.repeat_interleave(128, 0).repeat_interleave(128, 1)[:n, :k]
    return (w.float() / full).clamp(-448.0, 448.0).to(torch.float8_e4m3fn), scale


def correlate(paths: list[str]) -> None:
    """Pearson and rank correlation, across variants, of the KL shares with the target word's d log p."""
    rows = {}
    for path in paths:
        with open(path) as f:
            for r in json.load(f)["rows"]:
                rows.setdefault(r["variant"], r)
    ks, tk, dl = (np.array([r[k] for r in rows.values()])
                  for k in ("kl_share_of_ue8m0", "target_kl_share_of_ue8m0", "dlogp_vs_ue8m0"))

    def rank(v):
        return v.argsort().argsort()

    print(f"{len(rows)} variants; correlation with d log p vs all-UE8M0: KL share {np.corrcoef(ks, dl)[0, 1]:+.2f} "
          f"(ranks {np.corrcoef(rank(ks), rank(dl))[0, 1]:+.2f}), target-position KL share "
          f"{np.corrcoef(tk, dl)[0, 1]:+.2f} (ranks {np.corrcoef(rank(tk), rank(dl))[0, 1]:+.2f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=5153)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--report", action="append", default=[], metavar="NAME=REPORT.json")
    p.add_argument("--groups", default="all", help="layer groups to score: all, none, or a comma list of GROUPS")
    p.add_argument("--deadline", type=float, help="stop scoring new batches after this many seconds; the report "
                   "covers the items scored by then")
    p.add_argument("--jitter-seeds", default="", help="comma list of seeds: for each, all-float32 and the down_proj "
                   "group (if scored) again with every weight block's float32 scale times 1 + U[0, 1/16) "
                   "(variants float32~S, down_proj~S): the same precision, another rounding")
    p.add_argument("--exact-max-seeds", default="", help="comma list of seeds: the same with each block's scale "
                   "amax / 416 or amax / 448 at random (variants float32^S, down_proj^S): every block's largest "
                   "value stays exact, as with float32 scales, the others are rounded anew")
    p.add_argument("--split-formats", action="store_true", help="for every scored group G also G~w32 (its weights on "
                   "float32 scales, its activations on UE8M0) and G~a32 (weights UE8M0, activations float32), the "
                   "rest UE8M0: which side of a group's format moves the task")
    p.add_argument("--json")
    p.add_argument("--correlate", nargs="+", metavar="JSON", help="score nothing: across the variants of these "
                   "--json outputs (one row per variant name), how the KL shares correlate with d log p")
    args = p.parse_args()
    if args.correlate:
        return correlate(args.correlate)
    t0 = time.perf_counter()
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
        with open(path) as f:
            data = json.load(f)  # an audit report, or a JSON list of module names
        plan = data if isinstance(data, list) else data["plan"]["float32_layers"]
        variants[name] = plan
        variants[f"{name}_mlp_grouped"] = grouped(plan, names, "mlp")
        variants[f"{name}_attn_grouped"] = grouped(plan, names, "self_attn")
        variants[f"{name}_no_down"] = [n for n in plan if not n.endswith(".down_proj")]
    jitter = {}  # variant -> the float32-format weights it uses instead of sim.weights["float32"]
    for mark, seeds in (("~", args.jitter_seeds), ("^", args.exact_max_seeds)):
        for seed in [int(v) for v in seeds.split(",") if v]:
            gen = torch.Generator().manual_seed(seed)
            quantize = functools.partial(rerounded_weight, block=(128, 128)) if mark == "^" else jittered_weight
            weights = [quantize(m.weight.detach().float(), gen=gen) for _, m in sim.modules]
            for name in ("float32", "down_proj"):
                if name in variants:
                    variants[f"{name}{mark}{seed}"] = variants[name]
                    jitter[f"{name}{mark}{seed}"] = weights
    # Mixed keys for the simulator's swap: the activation format is the key's prefix, the weights are the list
    # stored under the key (the other format's quantized weights).
    mixed = {"w32": "ue8m0@float32-weights", "a32": "float32@ue8m0-weights"}
    sim.weights[mixed["w32"]], sim.weights[mixed["a32"]] = sim.weights["float32"], sim.weights["ue8m0"]
    split = {}  # variant -> (its group's layers, which side of them is on float32 scales)
    if args.split_formats:
        for g in groups:
            for side in mixed:
                split[f"{g}~{side}"] = (variants[g], side)
                variants[f"{g}~{side}"] = variants[g]
    size = {n: m.weight.numel() for n, m in sim.modules}  # GEMM FLOPs per token are 2 N K for every layer

    def flop_share(layers) -> float:
        return 0.0 if layers is None else 1 - sum(size[n] for n in layers) / sum(size.values())

    @contextlib.contextmanager
    def context(name):
        layers, saved = variants[name], sim.weights["float32"]
        sim.weights["float32"] = jitter.get(name, saved)  # read when the context is entered
        if name in split:
            side = split[name][1]
            # the simulator's per-layer swap with the mixed keys (its public contexts give each layer one format)
            ctx = sim._swapped([mixed[side] if n in layers else "ue8m0" for n, _ in sim.modules])
        else:
            ctx = sim.active("float32") if layers is None else sim.active_plan(layers)
        try:
            with ctx:
                sim.weights["float32"] = saved
                yield
        finally:
            sim.weights["float32"] = saved
    # per variant and item: target log p, greedy hit, KL to the unquantized model summed over the item's positions
    # and over the positions that predict the target word, and the item's position count
    cols = {name: ([], [], [], [], []) for name in variants}
    with torch.no_grad():
        for i in range(0, len(items), args.batch):  # every variant per batch: the unquantized pass is kept once
            chunk = items[i : i + args.batch]
            seqs = [torch.cat([a, b]) for a, b in chunk]
            x = torch.zeros((len(seqs), max(len(s) for s in seqs)), dtype=torch.long)
            for j, s in enumerate(seqs):
                x[j, : len(s)] = s
            x = x.to(args.device)
            # the target tokens' (row, position, token): only these, the argmax and the KL per position leave the GPU
            rows_t = torch.cat([torch.full((len(b),), j) for j, (_, b) in enumerate(chunk)])
            pos_t = torch.cat([torch.arange(len(a) - 1, len(a) + len(b) - 1) for a, b in chunk])
            tok_t = torch.cat([b for _, b in chunk])
            lp_base = torch.log_softmax(model(input_ids=x).logits.float(), -1)
            for name in variants:
                with context(name):
                    lp_all = torch.log_softmax(model(input_ids=x).logits.float(), -1)
                kl_all = (lp_base.exp() * (lp_base - lp_all)).sum(-1).double().cpu()
                top1 = lp_all.argmax(-1).cpu()
                lp_t = lp_all[rows_t.to(x.device), pos_t.to(x.device), tok_t.to(x.device)].double().cpu()
                del lp_all
                logp, hit, kl, tkl, npos = cols[name]
                at = 0
                for j, (a, b) in enumerate(chunk):
                    span = slice(len(a) - 1, len(a) + len(b) - 1)
                    logp.append(float(lp_t[at : at + len(b)].sum()))
                    at += len(b)
                    hit.append(bool((top1[j, span] == b).all()))
                    kl.append(float(kl_all[j, : len(a) + len(b)].sum()))
                    tkl.append(float(kl_all[j, span].sum()))
                    npos.append(len(a) + len(b))
            print(f"[{time.perf_counter() - t0:6.0f} s] items {i + len(chunk)}/{len(items)}: {len(variants)} "
                  "variants scored", flush=True)
            if args.deadline and time.perf_counter() - t0 > args.deadline:
                items = items[: i + len(chunk)]
                print(f"deadline: stopped after {len(items)} items", flush=True)
                break
    results = {name: tuple(np.array(v) for v in c) for name, c in cols.items()}
    lp8, hit8 = results["ue8m0"][:2]
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(items), size=(2000, len(items)))
    rows = []
    for name, (lp, hit, kl, _, npos) in results.items():
        d = lp - lp8
        boot = d[idx].mean(1)
        shares = {}
        for key, k in (("kl", 2), ("tkl", 3)):  # (variant - all-float32) / (all-UE8M0 - all-float32)
            v, r32, r8 = (results[n][k] for n in (name, "float32", "ue8m0"))
            b = (v[idx].sum(1) - r32[idx].sum(1)) / (r8[idx].sum(1) - r32[idx].sum(1))
            shares[key] = (float((v.sum() - r32.sum()) / (r8.sum() - r32.sum())),
                           [float(np.percentile(b, 2.5)), float(np.percentile(b, 97.5))])
        rows.append({"variant": name, "float32_layers": "all" if variants[name] is None else len(variants[name]),
                     "ue8m0_flop_share": flop_share(variants[name]),
                     "kl_per_position": float(kl.sum() / npos.sum()),
                     "kl_share_of_ue8m0": shares["kl"][0], "kl_share_ci": shares["kl"][1],
                     "target_kl_share_of_ue8m0": shares["tkl"][0], "target_kl_share_ci": shares["tkl"][1],
                     "mean_logp": float(lp.mean()), "accuracy": float(hit.mean()),
                     "dlogp_vs_ue8m0": float(d.mean()),
                     "dlogp_ci": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
                     "dacc_pp_vs_ue8m0": 100 * float(hit.mean() - hit8.mean()),
                     "mcnemar_p": mcnemar_exact_p(int((hit & ~hit8).sum()), int((~hit & hit8).sum()))})
    print(f"{len(items)} LAMBADA items, simulator, paired against all-UE8M0 (log p: natural log of the target word)")
    print("KL share: the variant's KL to the unquantized model over all-float32's, as a share of all-UE8M0's, over "
          "every position / at the positions predicting the target word [95% CI]")
    print(f"{'variant':18s} {'f32 layers':>10s} {'UE8M0 FLOPs':>11s} {'KL share':>22s} {'target KL share':>22s} "
          f"{'mean log p':>10s} {'acc %':>6s} {'d log p vs ue8m0 [95% CI]':>30s} {'d acc pp':>8s} {'McNemar p':>9s}")
    for r in rows:
        ks, tk = r["kl_share_ci"], r["target_kl_share_ci"]
        print(f"{r['variant']:18s} {r['float32_layers']!s:>10s} {100 * r['ue8m0_flop_share']:10.1f}% "
              f"{100 * r['kl_share_of_ue8m0']:6.1f}% [{100 * ks[0]:5.1f}, {100 * ks[1]:5.1f}] "
              f"{100 * r['target_kl_share_of_ue8m0']:6.1f}% [{100 * tk[0]:5.1f}, {100 * tk[1]:5.1f}] "
              f"{r['mean_logp']:10.4f} {100 * r['accuracy']:6.2f} "
              f"{r['dlogp_vs_ue8m0']:+10.4f} [{r['dlogp_ci'][0]:+.4f}, {r['dlogp_ci'][1]:+.4f}] "
              f"{r['dacc_pp_vs_ue8m0']:+8.2f} {r['mcnemar_p']:9.3g}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"items": len(items), "device": args.device, "torch": torch.__version__, "rows": rows}, f,
                      indent=1)


if __name__ == "__main__":
    main()
