"""The per-layer scale-format plan: the fewest layers to keep on float32 scales so that every other layer may run
a UE8M0 kernel (DeepGEMM on Blackwell) at a stated end-to-end cost.

Greedy over a ranking of the layers, worst first. ``rank="fisher_per_flop"`` (the default): a layer's
Fisher-weighted UE8M0 output error (``audit.sensitivity``: how much its error moves the loss) over its GEMM FLOPs,
the greedy knapsack density, so that a given KL budget is bought with the fewest FLOPs taken off UE8M0 (a small
``k_proj`` before a ``down_proj`` of the same score). ``rank="fisher"``: that score alone. ``rank="bits"``: the
calibrated bits lost (a layer's own SNR loss, which over-ranks layers whose error matters little downstream). The
plan keeps the ``k`` worst on float32 scales, ``k`` the smallest for which the plan's KL divergence to the
unquantized model exceeds all-float32's by at most ``kl_share`` of what all-UE8M0 adds. ``k`` is found by bisection
on selection windows, each step one simulated forward pass with that plan (``e2e.FP8Simulator``). The selection
windows are the head of the calibration text, never the held-out text: the chosen plan is then measured on the
held-out windows beside all-float32 and all-UE8M0 (``e2e.measure`` with the plan as a variant), with bootstrap
intervals, and ``plan_section`` reports those numbers, not the ones it was chosen on.

Where the held-out text marks LAMBADA's target words, the section also gives the plan's KL increase at the
positions that predict them and its target-word perplexity against all-UE8M0 (``target_words_check``): on SmolLM2
a plan within tolerance on every position's KL was worse than all-UE8M0 on those words (docs/audit.md).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from blockfp8.audit.e2e import ROUNDING, FP8Simulator, log_probs, window_sums

PLAN = "plan"  # the plan's variant name in the e2e section
RANKINGS = ("fisher_per_flop", "fisher", "bits")
FISHER_RANKINGS = ("fisher_per_flop", "fisher")  # the rankings that need ``sensitivity.fisher_sensitivity`` scores
_METHOD = {"fisher_per_flop": "Fisher-weighted output error per GEMM FLOP", "fisher": "Fisher-weighted output error",
           "bits": "bits lost"}


@dataclass(frozen=True)
class PlanTolerance:
    """How much of all-UE8M0's end-to-end loss a plan may keep."""

    kl_share: float = 0.2  # plan KL excess over all-float32 <= this share of all-UE8M0's excess
    rank: str = "fisher_per_flop"  # the order layers are kept on float32 scales in: one of RANKINGS
    # A floor on the GEMM FLOPs left on UE8M0: the plan never keeps more layers on float32 scales than this allows,
    # even when the KL tolerance then cannot be met (``within_tolerance`` says so). 0 = no floor.
    min_ue8m0_flop_share: float = 0.0
    # True: ``kl_share`` is set from the rounding floor on the selection windows before the search (the largest
    # share a re-rounding of all-float32 keeps there, ``with_floor``, which records them in ``floor_shares``): the
    # plan is then as close to all-float32 as another float32 rounding is.
    from_rounding_floor: bool = False
    floor_shares: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        f = self.min_ue8m0_flop_share
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= f <= 1.0:
            raise ValueError(f"plan min_ue8m0_flop_share={f!r} must be a number in [0, 1]")
        if isinstance(self.kl_share, bool) or not isinstance(self.kl_share, (int, float)) \
                or not 0.0 <= self.kl_share <= 1.0:
            raise ValueError(f"plan tolerance kl_share={self.kl_share!r} must be a number in [0, 1]")
        if self.rank not in RANKINGS:
            raise ValueError(f"plan ranking {self.rank!r} is not valid; valid values: {', '.join(RANKINGS)}")

    def with_floor(self, shares: Sequence[float]) -> PlanTolerance:
        """This tolerance with ``kl_share`` = the largest of the re-roundings' ``shares``, within [0, 1]."""
        if not shares:
            raise ValueError("a tolerance from the rounding floor needs at least one rounding")
        return replace(self, kl_share=min(1.0, max(0.0, *shares)), floor_shares=tuple(float(x) for x in shares))


class SelectionSet:
    """Selection windows with the unquantized log-probabilities kept, so that each candidate plan costs one
    simulated forward pass. Memory: windows x seq_len x vocab float32 values on the model's device."""

    def __init__(self, model: torch.nn.Module, ids: torch.Tensor, sim: FP8Simulator, batch_size: int):
        self.model, self.sim = model, sim
        device = next(model.parameters()).device
        self.batches = [ids[i : i + batch_size].to(device) for i in range(0, ids.shape[0], batch_size)]
        self.positions = int(ids.numel())
        with torch.no_grad():
            self.base = [log_probs(model, x) for x in self.batches]
        with sim.active("float32"):
            self.kl_fp32 = self._kl()
        with sim.active("ue8m0"):
            self.kl_ue8m0 = self._kl()

    @property
    def windows(self) -> int:
        return sum(x.shape[0] for x in self.batches)

    @torch.no_grad()
    def _kl(self) -> float:
        total = 0.0
        for x, lp_base in zip(self.batches, self.base, strict=True):
            total += float(window_sums(lp_base, log_probs(self.model, x), x)["kl"].sum())
        return total / self.positions

    def kl(self, float32_layers: Collection[str]) -> float:
        """Mean KL to the unquantized model with ``float32_layers`` on float32 scales and the rest on UE8M0."""
        with self.sim.active_plan(float32_layers):
            return self._kl()

    def rounding_shares(self, roundings: int) -> list[float]:
        """The share of all-UE8M0's KL excess each of ``roundings`` re-roundings of all-float32 keeps here (seeds
        1, 2, ...: the roundings the held-out floor measures)."""
        excess = self.kl_ue8m0 - self.kl_fp32
        shares = []
        for seed in range(1, roundings + 1):
            with self.sim.active(self.sim.add_rounding(seed)):
                shares.append((self._kl() - self.kl_fp32) / excess if excess > 0 else 0.0)
        return shares


def rank_layers(rows: Sequence[Mapping[str, Any]], scores: Mapping[str, float] | None = None, *,
                per_flop: bool = False) -> list[str]:
    """Layer names, highest ``scores`` (a layer's sensitivity) first, or most bits lost first without scores;
    ``per_flop`` divides each score by the layer's FLOPs (``flops_of``). Module order breaks ties."""
    if scores is None and per_flop:
        raise ValueError("rank_layers: per_flop needs scores")

    def key(row: Mapping[str, Any]) -> float:
        if scores is None:
            return float(row["bits_lost"])
        score = float(scores[row["name"]])
        return score / flops_of(row) if per_flop else score

    order = sorted(range(len(rows)), key=lambda i: (-key(rows[i]), i))
    return [rows[i]["name"] for i in order]


def choose(rows: Sequence[Mapping[str, Any]], selection: SelectionSet, tolerance: PlanTolerance,
           scores: Mapping[str, float] | None = None) -> tuple[list[str], list[dict]]:
    """The float32 layers of the plan and every step of the search (layers kept, KL, share of UE8M0's excess).

    Bisection keeps the invariant share(lo) > kl_share >= share(hi) on measured values (share(all) = 0: every
    layer on float32 scales is all-float32), so the answer was measured within tolerance and one layer fewer was
    measured outside it, even where the curve is not monotone. With a FLOP floor the search stops at the longest
    prefix the floor allows; if that is still outside the tolerance, it is the plan (the best the floor permits)."""
    if tolerance.from_rounding_floor and tolerance.floor_shares is None:
        raise ValueError("a tolerance from the rounding floor needs the floor measured first (with_floor)")
    needs = tolerance.rank in FISHER_RANKINGS
    if needs != (scores is not None):
        raise ValueError(f"plan ranking {tolerance.rank!r} {'needs' if needs else 'takes no'} Fisher scores")
    ranked = rank_layers(rows, scores, per_flop=tolerance.rank == "fisher_per_flop")
    kl32, kl8 = selection.kl_fp32, selection.kl_ue8m0
    excess = kl8 - kl32
    steps = [{"float32_layers": 0, "kl": kl8, "share": 1.0 if excess > 0 else 0.0},
             {"float32_layers": len(ranked), "kl": kl32, "share": 0.0}]
    if excess <= 0 or tolerance.kl_share >= 1.0:  # UE8M0 adds nothing measurable: nothing to keep
        return [], steps
    lo, hi = 0, _longest_prefix(rows, ranked, tolerance.min_ue8m0_flop_share)
    if hi < len(ranked):
        kl = selection.kl(ranked[:hi])
        steps.append({"float32_layers": hi, "kl": kl, "share": (kl - kl32) / excess})
        if steps[-1]["share"] > tolerance.kl_share:
            return ranked[:hi], sorted(steps, key=lambda s: s["float32_layers"])
    while hi - lo > 1:
        mid = (lo + hi) // 2
        kl = selection.kl(ranked[:mid])
        share = (kl - kl32) / excess
        steps.append({"float32_layers": mid, "kl": kl, "share": share})
        if share <= tolerance.kl_share:
            hi = mid
        else:
            lo = mid
    return ranked[:hi], sorted(steps, key=lambda s: s["float32_layers"])


def _longest_prefix(rows: Sequence[Mapping[str, Any]], ranked: Sequence[str], floor: float) -> int:
    """How many leading layers of ``ranked`` may go to float32 scales with at least ``floor`` of the FLOPs on UE8M0."""
    by_name = {r["name"]: flops_of(r) for r in rows}
    total, kept = sum(by_name.values()), 0.0
    for k, name in enumerate(ranked):
        kept += by_name[name]
        if total > 0 and 1.0 - kept / total < floor - 1e-12:
            return k
    return len(ranked)


def flops_of(row: Mapping[str, Any]) -> float:
    """A layer's GEMM FLOPs over the calibration tokens: 2 N K tokens."""
    n, k = row["shape"]
    return 2.0 * n * k * float(row.get("tokens", 1))


def ue8m0_flop_share(rows: Sequence[Mapping[str, Any]], float32_layers: Collection[str]) -> float:
    total = sum(flops_of(r) for r in rows)
    kept = sum(flops_of(r) for r in rows if r["name"] not in float32_layers)
    return kept / total if total > 0 else 0.0


def _pct(d: Mapping[str, Any], key: str, scale: float = 100.0) -> dict:
    return {"value": scale * d[key], "ci": [scale * d[f"{key}_ci"][0], scale * d[f"{key}_ci"][1]]}


def _deltas(d: Mapping[str, Any]) -> dict:
    out = {"kl_increase_pct": _pct(d, "kl_increase"), "ppl_increase_pct": _pct(d, "ppl_increase"),
           "top1_change_pp": _pct(d, "top1_change")}
    if "acc_change" in d:
        out["acc_change_pp"] = _pct(d, "acc_change")
    if "target_ppl_increase" in d:
        out["target_ppl_increase_pct"] = _pct(d, "target_ppl_increase")
    if "target_ppl_vs_ue8m0" in d:
        out["target_ppl_vs_all_ue8m0_pct"] = _pct(d, "target_ppl_vs_ue8m0")
    if "target_kl_increase" in d:
        out["target_kl_increase_pct"] = _pct(d, "target_kl_increase")
    return out


def _share(plan: Mapping[str, Any], ue8m0: Mapping[str, Any], key: str) -> float:
    """A variant's (the plan's, a rounding's) increase over all-float32 as a share of all-UE8M0's (0 when UE8M0
    adds nothing)."""
    share = plan[key] / ue8m0[key] if ue8m0[key] > 0 else 0.0
    if not math.isfinite(share):
        raise ValueError(f"plan: the share of all-UE8M0's {key.replace('_', ' ')} is not finite")
    return share


def target_words_check(plan_deltas: Mapping[str, Any]) -> dict | None:
    """Whether the plan is worse than all-UE8M0 on the passages' target words (the interval of its target-word
    perplexity over all-UE8M0's lies above zero): the plan is chosen on every position's KL, and on SmolLM2 that
    did not carry over to the task's long-range last word (docs/audit.md). None when not measured."""
    vs = plan_deltas.get("target_ppl_vs_all_ue8m0_pct")
    if vs is None:
        return None
    return {"worse_than_all_ue8m0": vs["ci"][0] > 0.0, "target_ppl_vs_all_ue8m0_pct": vs}


def rounding_floor(e2e: Mapping[str, Any]) -> dict | None:
    """What rounding all-float32 anew at the same precision moves (``e2e.ROUNDING`` variants): each rounding's KL
    increase over all-float32 as a share of all-UE8M0's, and its perplexity and target-word perplexity change.
    A plan whose share lies inside the band is as close to all-float32 as float32 scales are to themselves. None
    when not measured."""
    keys = sorted((k for k in e2e if k.startswith(ROUNDING) and k.endswith("_vs_fp32")),
                  key=lambda k: int(k[len(ROUNDING) : -len("_vs_fp32")]))
    if not keys:
        return None
    ue8m0 = e2e["ue8m0_vs_fp32"]
    rows = [e2e[k] for k in keys]
    out = {"roundings": len(rows),
           "kl_share_of_ue8m0": [_share(r, ue8m0, "kl_increase") for r in rows],
           "ppl_increase_pct": [100 * r["ppl_increase"] for r in rows]}
    if all("target_ppl_increase" in r for r in rows):
        out["target_ppl_increase_pct"] = [100 * r["target_ppl_increase"] for r in rows]
    return out


def plan_section(rows: Sequence[Mapping[str, Any]], float32_layers: Sequence[str], e2e: Mapping[str, Any],
                 steps: Sequence[Mapping[str, Any]], tolerance: PlanTolerance, selection_tokens: int) -> dict:
    """The report's ``plan`` object (docs/audit.md): the layers, the FLOP share left on UE8M0 and the held-out
    deltas of the plan and of all-UE8M0 against all-float32."""
    plan, ue8m0 = e2e[f"{PLAN}_vs_fp32"], e2e["ue8m0_vs_fp32"]
    share = _share(plan, ue8m0, "kl_increase")
    deltas = _deltas(plan)
    e2e_out = {**deltas, "kl_share_of_ue8m0": share, "all_ue8m0": _deltas(ue8m0)}
    if "target_kl_increase" in plan:  # where the held-out text marks target words: the KL share at those positions
        e2e_out["target_kl_share_of_ue8m0"] = _share(plan, ue8m0, "target_kl_increase")
    floor = rounding_floor(e2e)
    if floor is not None:
        floor["plan_within"] = share <= max(floor["kl_share_of_ue8m0"])
    return {
        "method": f"greedy by {_METHOD[tolerance.rank]}: "
                  "the k worst layers keep float32 scales, k the smallest whose KL excess over all-float32 is within "
                  "the tolerance on the selection windows (bisection); verified on the held-out windows"
                  + ("; the tolerance is the rounding floor there (the largest share a re-rounding of all-float32 "
                     "keeps)" if tolerance.from_rounding_floor else ""),
        "tolerance": asdict(tolerance),
        "float32_layers": list(float32_layers),
        "ue8m0_layers": len(rows) - len(float32_layers),
        "layers": len(rows),
        "ue8m0_flop_share": ue8m0_flop_share(rows, set(float32_layers)),
        "selection": {"tokens": selection_tokens, "text": "calibration windows (head of the text)",
                      "steps": [dict(s) for s in steps]},
        "e2e": e2e_out,
        "within_tolerance": share <= tolerance.kl_share,
        "target_words": target_words_check(deltas),
        "rounding_floor": floor,
    }
