"""Compare the per-layer plan's rankings (audit.scale_plan.RANKINGS) on one model with one load: the calibrated rows,
the Fisher scores and the selection windows are computed once, each ranking chooses a plan at the tolerance and with
a FLOP floor, and every plan is measured on the same held-out windows in one paired run (``e2e.measure`` with all
plans as variants). ``--drop N`` also tries, for the unfloored Fisher plans, a pass after the bisection that moves
float32 layers back to UE8M0 (most FLOPs first, the lowest-ranked of equal FLOPs first) while the selection windows
stay within the tolerance, at most N measured plans.

Usage: python benchmarks/plan_rankings.py --out DIR [--model smollm2] [--calib 16] [--eval 32] [--seq-len 128]
       [--plan-windows 16] [--tolerance 0.2] [--min-flops 0.9] [--ranks fisher_per_flop fisher bits] [--drop 0]
Writes DIR/report.json and DIR/report.md (the same held-out quantities as a report's ``plan`` section, plus a
paired-bootstrap interval of the KL share, and each variant's per-window KL sums for paired comparisons).
"""

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
import transformers

from blockfp8.audit import calibrated, e2e, scale_plan, sensitivity, text
from blockfp8.models import load_causal_lm

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--model", default="smollm2")
p.add_argument("--calib", type=int, default=16)
p.add_argument("--eval", type=int, default=32)
p.add_argument("--seq-len", type=int, default=128)
p.add_argument("--plan-windows", type=int, default=16)
p.add_argument("--tolerance", type=float, default=0.2)
p.add_argument("--min-flops", type=float, default=0.9)
p.add_argument("--ranks", nargs="+", choices=scale_plan.RANKINGS, default=list(scale_plan.RANKINGS))
p.add_argument("--drop", type=int, default=0)
p.add_argument("--bootstrap", type=int, default=2000)
args = p.parse_args()
t0 = time.perf_counter()
times = {}


def log(msg):
    print(f"[{time.perf_counter() - t0:7.1f} s] {msg}", flush=True)


def drop_pass(rows, ranked_f32, selection, tol, max_tries):
    """Move float32 layers back to UE8M0, most FLOPs first, while the selection share stays within ``tol``."""
    flops = {r["name"]: scale_plan.flops_of(r) for r in rows}
    kl32, excess = selection.kl_fp32, selection.kl_ue8m0 - selection.kl_fp32
    kept, steps = list(ranked_f32), []
    order = sorted(range(len(ranked_f32)), key=lambda i: (-flops[ranked_f32[i]], -i))
    for i in order[:max_tries]:
        trial = [n for n in kept if n != ranked_f32[i]]
        share = (selection.kl(trial) - kl32) / excess
        steps.append({"drop": ranked_f32[i], "share": share, "kept": share <= tol})
        if share <= tol:
            kept = trial
    return kept, steps


BATCH = 2048 // args.seq_len
model, tok = load_causal_lm(args.model, dtype="float32", device="cpu")
log("model loaded")
cw = text.windows(tok, args.calib, args.seq_len, "calibration")
ew = text.windows(tok, args.eval, args.seq_len, "evaluation")
rows = [r.as_dict() for r in calibrated.audit_calibrated(model, cw.ids, batch_size=BATCH)[0]]
times["calibrated_s"] = round(time.perf_counter() - t0, 1)
log("calibrated")
ids = cw.ids[: args.plan_windows]
t1 = time.perf_counter()
scores = sensitivity.fisher_sensitivity(model, ids, batch_size=max(1, BATCH // 4))
times["fisher_s"] = round(time.perf_counter() - t1, 1)
log("fisher scores")
t1 = time.perf_counter()
selection = scale_plan.SelectionSet(model, ids, e2e.FP8Simulator(model), max(1, BATCH // 2))
times["selection_s"] = round(time.perf_counter() - t1, 1)
log(f"selection: kl fp32 {selection.kl_fp32:.5f} ue8m0 {selection.kl_ue8m0:.5f}")

plans, info = {}, {}
for rank in args.ranks:
    for floor in (0.0, args.min_flops):
        tol = scale_plan.PlanTolerance(args.tolerance, rank, floor)
        t1 = time.perf_counter()
        f32, steps = scale_plan.choose(rows, selection, tol, scores if rank in scale_plan.FISHER_RANKINGS else None)
        name = rank if floor == 0 else f"{rank}+floor{floor:g}"
        plans[name] = f32
        info[name] = {"rank": rank, "min_ue8m0_flop_share": floor, "selection_steps": steps,
                      "search_s": round(time.perf_counter() - t1, 1)}
        log(f"{name}: {len(f32)} float32 layers, {scale_plan.ue8m0_flop_share(rows, set(f32)):.3f} FLOPs on UE8M0")
        if args.drop and floor == 0 and rank in scale_plan.FISHER_RANKINGS:
            t1 = time.perf_counter()
            kept, dsteps = drop_pass(rows, f32, selection, args.tolerance, args.drop)
            plans[f"{name}+drop"] = kept
            info[f"{name}+drop"] = {"rank": rank, "min_ue8m0_flop_share": 0.0, "drop_steps": dsteps,
                                    "search_s": round(time.perf_counter() - t1, 1)}
            log(f"{name}+drop: {len(kept)} float32 layers, "
                f"{scale_plan.ue8m0_flop_share(rows, set(kept)):.3f} FLOPs on UE8M0")

t1 = time.perf_counter()
variants = {f"p{i}": f32 for i, f32 in enumerate(plans.values())}  # e2e variant names: no '+' or '.'
sums = e2e.measure(model, ew.ids, batch_size=max(1, BATCH // 2), plans=variants)
summary = e2e.summarize(sums, args.seq_len, n_boot=args.bootstrap)
times["e2e_s"] = round(time.perf_counter() - t1, 1)
log("held out measured")

# the KL share with a paired bootstrap interval over windows (the same resamples for every variant)
n = len(sums["kl_fp32"])
idx = np.random.default_rng(0).integers(0, n, size=(args.bootstrap, n))
kl = {v: sums[f"kl_{v}"][idx].sum(-1) for v in ["fp32", "ue8m0", *variants]}
rows_out = []
for (name, f32), v in zip(plans.items(), variants, strict=True):
    d, u = summary[f"{v}_vs_fp32"], summary["ue8m0_vs_fp32"]
    share_boot = (kl[v] - kl["fp32"]) / (kl["ue8m0"] - kl["fp32"])
    rows_out.append({
        "plan": name, **info[name], "float32_layers": f32, "float32_layer_count": len(f32),
        "ue8m0_flop_share": scale_plan.ue8m0_flop_share(rows, set(f32)),
        "kl_share_of_ue8m0": d["kl_increase"] / u["kl_increase"],
        "kl_share_of_ue8m0_ci": [float(np.percentile(share_boot, 2.5)), float(np.percentile(share_boot, 97.5))],
        "kl_increase": d["kl_increase"], "kl_increase_ci": d["kl_increase_ci"],
        "ppl_increase": d["ppl_increase"], "ppl_increase_ci": d["ppl_increase_ci"],
        "top1_change": d["top1_change"], "acc_change": d["acc_change"],
    })
times["total_s"] = round(time.perf_counter() - t0, 1)
report = {
    "model": args.model, "args": vars(args), "calibration_tokens": cw.tokens, "held_out_tokens": ew.tokens,
    "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                 "python": platform.python_version(), "threads": torch.get_num_threads()},
    "times": times, "selection": {"kl_fp32": selection.kl_fp32, "kl_ue8m0": selection.kl_ue8m0},
    "e2e": summary, "plans": rows_out,
    "window_kl_sums": {"all-float32": sums["kl_fp32"].tolist(), "all-UE8M0": sums["kl_ue8m0"].tolist(),
                       **{name: sums[f"kl_{v}"].tolist() for name, v in zip(plans, variants, strict=True)}},
    "layers": [{"name": r["name"], "shape": r["shape"], "bits_lost": r["bits_lost"],
                "ue8m0_sensitivity": scores[r["name"]]} for r in rows],
}
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
(out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
u = summary["ue8m0_vs_fp32"]
md = [f"# Plan rankings, {args.model}: {args.calib} x {args.seq_len} calibration tokens (plan chosen on the first "
      f"{args.plan_windows} windows), {args.eval} x {args.seq_len} held-out tokens, tolerance {args.tolerance:g}",
      "", f"all-UE8M0 vs all-float32, held out: KL +{100 * u['kl_increase']:.1f}% "
      f"[{100 * u['kl_increase_ci'][0]:+.1f}, {100 * u['kl_increase_ci'][1]:+.1f}], perplexity "
      f"{100 * u['ppl_increase']:+.2f}% [{100 * u['ppl_increase_ci'][0]:+.2f}, {100 * u['ppl_increase_ci'][1]:+.2f}]",
      "", "| plan | float32 layers | GEMM FLOPs on UE8M0 | KL share of all-UE8M0's increase, held out [95% CI] "
      "| perplexity vs all-float32 [95% CI] | measured plans | search s |", "|---|---|---|---|---|---|---|"]
for r in rows_out:
    lo, hi = r["kl_share_of_ue8m0_ci"]
    plo, phi = r["ppl_increase_ci"]
    nsteps = len(r["drop_steps"]) if "drop_steps" in r else len(r["selection_steps"]) - 2  # less both ends
    md.append(f"| {r['plan']} | {r['float32_layer_count']} | {100 * r['ue8m0_flop_share']:.1f}% | "
              f"{100 * r['kl_share_of_ue8m0']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] | "
              f"{100 * r['ppl_increase']:+.2f}% [{100 * plo:+.2f}, {100 * phi:+.2f}] | {nsteps} | {r['search_s']} |")
md += ["", f"times (s): {times}", f"versions: {report['versions']}"]
(out / "report.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
