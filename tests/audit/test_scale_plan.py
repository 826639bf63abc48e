"""The per-layer scale-format plan (audit.scale_plan) on a tiny random Llama with one outlier layer: the simulator
runs a mixed plan exactly, the search keeps the fewest worst layers within tolerance, the report carries the
documented ``plan`` object."""

import json

import pytest
import torch

from blockfp8.audit import calibrated, e2e, scale_plan
from blockfp8.audit import run as levels

transformers = pytest.importorskip("transformers")




def test_mixed_plan_is_exact_at_both_ends(tiny_llama, ids):
    sim = e2e.FP8Simulator(tiny_llama)
    names = [n for n, _ in sim.modules]
    with torch.no_grad():
        for fmt, layers in (("float32", names), ("ue8m0", [])):
            with sim.active(fmt):
                want = tiny_llama(input_ids=ids).logits
            with sim.active_plan(layers):
                assert torch.equal(tiny_llama(input_ids=ids).logits, want), fmt
        with sim.active_plan(names[:1]):  # one layer on float32 scales differs from both
            mixed = tiny_llama(input_ids=ids).logits
        assert not torch.equal(mixed, want)
    with pytest.raises(ValueError, match="not.a.layer"):
        sim.active_plan(["not.a.layer"]).__enter__()


def test_rerounded_weight_keeps_each_block_max_exact_and_rounds_the_rest_anew():
    from blockfp8.quant import reference as ref

    w = torch.randn(300, 200) * torch.logspace(-2, 1, 200)  # ragged: 3 x 2 blocks, the last ones partial
    q, s = e2e.rerounded_weight(w, (128, 128), torch.Generator().manual_seed(0))
    q32, s32 = ref.quantize_weight(w, (128, 128), "float32")
    assert q.shape == w.shape and q.dtype == torch.float8_e4m3fn and s.shape == s32.shape
    top = (s32 / s * 448).round()  # each block's scale is amax/448 or amax/416
    assert set(top.flatten().tolist()) == {416.0, 448.0}
    deq = ref.dequantize_weight(q, s, (128, 128), torch.float32)
    for i in range(3):
        for j in range(2):
            blk = (slice(128 * i, 128 * (i + 1)), slice(128 * j, 128 * (j + 1)))
            k = w[blk].abs().argmax()
            assert deq[blk].flatten()[k] == pytest.approx(w[blk].flatten()[k].item(), rel=1e-6)  # the max: exact
    assert not torch.equal(q.float(), q32.float())  # the rest: rounded anew
    err, err32 = (deq - w).norm(), (ref.dequantize_weight(q32, s32, (128, 128), torch.float32) - w).norm()
    assert err32 < err < 1.2 * err32  # the same precision, up to a grid at most 448/416 coarser
    again, _ = e2e.rerounded_weight(w, (128, 128), torch.Generator().manual_seed(0))
    assert torch.equal(again.float(), q.float())  # a seed is one rounding


def test_a_rounding_holds_no_weight_copy_and_runs_rerounded_weights(tiny_llama, ids):
    from blockfp8.quant import reference as ref

    sim = e2e.FP8Simulator(tiny_llama)
    key = sim.add_rounding(4)
    assert set(sim.weights) == set(ref.SCALE_FMTS)  # only each block's choice is kept
    gen = torch.Generator().manual_seed(4)  # the same draws, layer by layer, as the stored tops
    expected = [e2e.rerounded_weight(m.weight.detach(), sim.block, gen) for _, m in sim.modules]
    sim.weights["float32"], saved = expected, sim.weights["float32"]
    with torch.no_grad():
        with sim.active("float32"):
            want = tiny_llama(input_ids=ids).logits
        sim.weights["float32"] = saved
        with sim.active(key):
            got = tiny_llama(input_ids=ids).logits
        with sim.active("float32"):
            assert not torch.equal(tiny_llama(input_ids=ids).logits, got)
    assert torch.equal(got, want)


def test_search_keeps_the_worst_layers_within_tolerance(tiny_llama, ids):
    rows = [r.as_dict() for r in calibrated.audit_calibrated(tiny_llama, ids)[0]]
    ranked = scale_plan.rank_layers(rows)
    assert ranked[0].startswith("model.layers.1.self_attn.")  # the outlier layers lose most
    sim = e2e.FP8Simulator(tiny_llama)
    selection = scale_plan.SelectionSet(tiny_llama, ids, sim, batch_size=2)
    assert selection.kl_ue8m0 > selection.kl_fp32 > 0
    tol = scale_plan.PlanTolerance(0.2, rank="bits")
    f32, steps = scale_plan.choose(rows, selection, tol)
    assert f32 == ranked[: len(f32)] and 0 < len(f32) < len(rows)
    by_k = {s["float32_layers"]: s["share"] for s in steps}
    assert by_k[len(f32)] <= tol.kl_share < by_k[len(f32) - 1]  # measured: within, and one fewer is not
    assert selection.kl(f32) == pytest.approx(selection.kl_fp32 + by_k[len(f32)] * (selection.kl_ue8m0 -
                                                                                    selection.kl_fp32))
    assert scale_plan.choose(rows, selection, scale_plan.PlanTolerance(1.0, "bits"))[0] == []
    all_f32 = scale_plan.choose(rows, selection, scale_plan.PlanTolerance(0.0, "bits"))[0]
    assert len(all_f32) >= len(f32)
    # a FLOP floor caps the plan: best effort when the tolerance cannot be met above it
    floor = scale_plan.ue8m0_flop_share(rows, set(f32[:1])) + 1e-9
    capped, steps = scale_plan.choose(rows, selection, scale_plan.PlanTolerance(0.0, "bits", floor))
    assert capped == [] and scale_plan.ue8m0_flop_share(rows, set(capped)) >= floor
    loose = scale_plan.choose(rows, selection, scale_plan.PlanTolerance(0.2, "bits", min_ue8m0_flop_share=0.0))[0]
    assert loose == f32
    # the Fisher rankings search over their own order, and need the scores exactly where they use them
    scores = {r["name"]: float(i % 5) for i, r in enumerate(rows)}
    per_flop = scale_plan.choose(rows, selection, scale_plan.PlanTolerance(0.2), scores)[0]
    assert per_flop == scale_plan.rank_layers(rows, scores, per_flop=True)[: len(per_flop)]
    with pytest.raises(ValueError, match="'fisher_per_flop' needs Fisher scores"):
        scale_plan.choose(rows, selection, scale_plan.PlanTolerance(0.2))
    with pytest.raises(ValueError, match="'bits' takes no Fisher scores"):
        scale_plan.choose(rows, selection, tol, scores)


def test_tolerance_from_the_rounding_floor_is_the_largest_rerounding_share(tiny_llama, ids):
    rows = [r.as_dict() for r in calibrated.audit_calibrated(tiny_llama, ids)[0]]
    sim = e2e.FP8Simulator(tiny_llama)
    selection = scale_plan.SelectionSet(tiny_llama, ids, sim, batch_size=2)
    shares = selection.rounding_shares(2)
    excess = selection.kl_ue8m0 - selection.kl_fp32
    with sim.active(sim.add_rounding(2)):  # the same seed is the same rounding
        assert shares[1] == pytest.approx((selection._kl() - selection.kl_fp32) / excess)
    floor = scale_plan.PlanTolerance(rank="bits", from_rounding_floor=True)
    with pytest.raises(ValueError, match="floor measured first"):
        scale_plan.choose(rows, selection, floor)
    with pytest.raises(ValueError, match="at least one rounding"):
        floor.with_floor([])
    tol = floor.with_floor(shares)
    assert tol.kl_share == min(1.0, max(0.0, *shares)) and tol.floor_shares == tuple(shares)
    assert scale_plan.choose(rows, selection, tol)[0] == scale_plan.choose(
        rows, selection, scale_plan.PlanTolerance(tol.kl_share, "bits"))[0]
    assert floor.with_floor([-0.3, -0.1]).kl_share == 0.0 and floor.with_floor([1.7]).kl_share == 1.0


def test_per_flop_ranking_is_score_over_flops_with_ties_in_module_order():
    rows = [{"name": "big", "shape": [100, 200], "tokens": 10, "bits_lost": 3.0},    # 400k FLOPs
            {"name": "small", "shape": [10, 200], "tokens": 10, "bits_lost": 2.0},   # 40k
            {"name": "tie", "shape": [20, 200], "tokens": 10, "bits_lost": 1.0},     # 80k
            {"name": "neg", "shape": [10, 200], "tokens": 10, "bits_lost": 0.5}]
    scores = {"big": 8.0, "small": 1.0, "tie": 2.0, "neg": -1.0}
    assert scale_plan.rank_layers(rows, scores, per_flop=True) == ["small", "tie", "big", "neg"]
    swapped = [rows[0], rows[2], rows[1], rows[3]]  # equal density: module order, not score or FLOPs, decides
    assert scale_plan.rank_layers(swapped, scores, per_flop=True) == ["tie", "small", "big", "neg"]
    assert scale_plan.rank_layers(rows, scores) == ["big", "tie", "small", "neg"]
    assert scale_plan.rank_layers(rows) == ["big", "small", "tie", "neg"]
    with pytest.raises(ValueError, match="per_flop needs scores"):
        scale_plan.rank_layers(rows, per_flop=True)


def test_flop_share_weighs_shape_and_tokens():
    rows = [{"name": "a", "shape": [100, 200], "tokens": 10}, {"name": "b", "shape": [300, 200], "tokens": 10}]
    assert scale_plan.ue8m0_flop_share(rows, {"a"}) == pytest.approx(0.75)
    assert scale_plan.ue8m0_flop_share(rows, set()) == 1.0


@pytest.mark.parametrize("bad", [-0.1, 1.5, True, "x"])
def test_bad_tolerance_is_named(bad):
    with pytest.raises(ValueError, match="kl_share"):
        scale_plan.PlanTolerance(bad)
    with pytest.raises(ValueError, match="min_ue8m0_flop_share"):
        scale_plan.PlanTolerance(0.2, min_ue8m0_flop_share=bad)
    with pytest.raises(ValueError, match="ranking 'x'"):
        scale_plan.PlanTolerance(0.2, rank="x")


def test_report_carries_the_plan_contract(tiny_llama, tmp_path):
    from blockfp8.audit import render

    class Tok:
        def __call__(self, s, add_special_tokens=False):
            return {"input_ids": [ord(c) % 96 for c in s]}

    report = levels.audit_model(tiny_llama, Tok(), "tiny", calib=3, seq_len=16, eval_windows=4, n_boot=100,
                                plan=scale_plan.PlanTolerance(0.2), plan_windows=2)
    data = json.loads(json.dumps(report.to_dict()))
    plan = data["plan"]
    assert list(data).index("plan") == list(data).index("e2e") + 1
    assert set(plan["float32_layers"]) <= {r["name"] for r in data["layers"]}
    assert 0 < plan["ue8m0_flop_share"] <= 1 and plan["selection"]["tokens"] == 2 * 16
    for key in ("kl_increase_pct", "ppl_increase_pct"):
        lo, hi = plan["e2e"][key]["ci"]
        assert lo <= plan["e2e"][key]["value"] <= hi
        assert plan["e2e"]["all_ue8m0"][key]["value"] == pytest.approx(100 * data["e2e"]["ue8m0_vs_fp32"][
            key.removesuffix("_pct")])
    assert plan["e2e"]["kl_increase_pct"]["value"] == pytest.approx(100 * data["e2e"]["plan_vs_fp32"]["kl_increase"])
    assert plan["within_tolerance"] == (plan["e2e"]["kl_share_of_ue8m0"] <= 0.2)
    assert plan["method"].startswith("greedy by Fisher-weighted output error per GEMM FLOP: ")
    assert plan["tolerance"]["rank"] == "fisher_per_flop"
    assert "plan" in data["summary"]["prediction"] and "ue8m0" in data["summary"]["prediction"]
    assert "plan_s" in data["run"]
    assert "target_kl_share_of_ue8m0" not in plan["e2e"]  # this tokenizer gives no offsets: no target words
    floor = plan["rounding_floor"]  # two re-roundings of all-float32 by default
    assert floor["roundings"] == 2 and "fp32r1_vs_fp32" in data["e2e"] and "fp32r2_vs_fp32" in data["e2e"]
    u = data["e2e"]["ue8m0_vs_fp32"]["kl_increase"]
    for i, share in enumerate(floor["kl_share_of_ue8m0"], 1):
        assert share == pytest.approx(data["e2e"][f"fp32r{i}_vs_fp32"]["kl_increase"] / u)
        assert floor["ppl_increase_pct"][i - 1] == pytest.approx(100 * data["e2e"][f"fp32r{i}_vs_fp32"]["ppl_increase"])
    assert floor["plan_within"] == (plan["e2e"]["kl_share_of_ue8m0"] <= max(floor["kl_share_of_ue8m0"]))
    assert "fp32r1" not in data["summary"]["prediction"]  # the floor is no candidate to predict
    none = levels.audit_model(tiny_llama, Tok(), "tiny", calib=3, seq_len=16, eval_windows=4, n_boot=100,
                              plan=scale_plan.PlanTolerance(0.2), plan_windows=2, roundings=0)
    assert none.plan["rounding_floor"] is None and "fp32r1_vs_fp32" not in none.e2e
    by_floor = levels.audit_model(tiny_llama, Tok(), "tiny", calib=3, seq_len=16, eval_windows=4, n_boot=100,
                                  plan=scale_plan.PlanTolerance(from_rounding_floor=True), plan_windows=2)
    tol = by_floor.plan["tolerance"]
    assert tol["from_rounding_floor"] and len(tol["floor_shares"]) == 2
    assert tol["kl_share"] == min(1.0, max(0.0, *tol["floor_shares"]))
    assert by_floor.plan["method"].endswith("the tolerance is the rounding floor there (the largest share a "
                                            "re-rounding of all-float32 keeps)")
    assert "tolerance: the rounding floor on the selection windows" in "\n".join(render.plan_lines(by_floor))
    with pytest.raises(ValueError, match="at least one rounding"):
        levels.audit_model(tiny_llama, Tok(), "tiny", calib=3, seq_len=16, eval_windows=4, n_boot=100,
                           plan=scale_plan.PlanTolerance(from_rounding_floor=True), plan_windows=2, roundings=0)


def test_plan_reports_the_kl_share_at_target_word_positions(tiny_llama):
    from blockfp8.audit import render

    class Tok:  # one token per character, with offsets: LAMBADA's target words are marked
        def __call__(self, s, add_special_tokens=False, return_offsets_mapping=False):
            out = {"input_ids": [ord(c) % 96 for c in s]}
            if return_offsets_mapping:
                out["offset_mapping"] = [(i, i + 1) for i in range(len(s))]
            return out

    report = levels.audit_model(tiny_llama, Tok(), "tiny", calib=3, seq_len=400, eval_windows=3, n_boot=100,
                                plan=scale_plan.PlanTolerance(0.2), plan_windows=3)
    data = json.loads(json.dumps(report.to_dict()))
    e = data["plan"]["e2e"]
    ue8m0 = e["all_ue8m0"]["target_kl_increase_pct"]["value"]
    assert e["target_kl_increase_pct"]["value"] == pytest.approx(
        100 * data["e2e"]["plan_vs_fp32"]["target_kl_increase"])
    assert e["target_kl_share_of_ue8m0"] == (pytest.approx(e["target_kl_increase_pct"]["value"] / ue8m0)
                                             if ue8m0 > 0 else 0.0)
    assert data["plan"]["within_tolerance"] == (e["kl_share_of_ue8m0"] <= 0.2)  # judged on every position
    text = "\n".join(render.plan_lines(report))
    assert "at the target-word positions it keeps" in text
    floor = data["plan"]["rounding_floor"]
    assert len(floor["target_ppl_increase_pct"]) == 2
    assert "rounding floor: all-float32 rounded anew at the same precision (2 roundings)" in text
    assert ("the plan is inside that band" in text) == floor["plan_within"]


def test_plan_name_may_not_shadow_the_rounding_floor(tiny_llama, ids):
    with pytest.raises(ValueError, match="fp32r1.*taken"):
        e2e.measure(tiny_llama, ids, plans={"fp32r1": []})


def test_plan_roundings_flag_is_checked():
    import argparse

    from blockfp8.cli.args import add_plan_arguments

    parser = argparse.ArgumentParser()
    add_plan_arguments(parser)
    from blockfp8.cli.args import UsageError, plan_from_args

    assert parser.parse_args([]).plan_roundings == 2
    assert parser.parse_args(["--plan-roundings", "0"]).plan_roundings == 0
    for bad in (["--plan-roundings", "-1"], ["--plan-tolerance", "flor"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    tol, _ = plan_from_args(parser.parse_args(["--plan-tolerance", "floor"]))
    assert tol.from_rounding_floor and tol.floor_shares is None
    assert plan_from_args(parser.parse_args(["--plan-tolerance", "0.3"]))[0].kl_share == 0.3
    with pytest.raises(UsageError, match="'floor' needs at least one rounding"):
        plan_from_args(parser.parse_args(["--plan-tolerance", "floor", "--plan-roundings", "0"]))


def test_fisher_sensitivity_equals_the_direct_computation(tiny_llama, ids):
    from blockfp8.audit import sensitivity
    from blockfp8.quant import reference as ref

    scores = sensitivity.fisher_sensitivity(tiny_llama, ids, batch_size=4)
    assert all(p.grad is None and p.requires_grad for p in tiny_llama.parameters())  # frozen only meanwhile
    assert len(scores) == 14 and all(torch.isfinite(torch.tensor(v)) for v in scores.values())
    layer = tiny_llama.model.layers[1].self_attn.k_proj
    seen = {}

    def keep(module, inputs, output):
        output.retain_grad()
        seen.update(x=inputs[0].detach(), y=output)

    h = layer.register_forward_hook(keep)
    emb = tiny_llama.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = tiny_llama(inputs_embeds=emb).logits.float()
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 96), ids[:, 1:].reshape(-1), reduction="sum")
    loss.backward()
    h.remove()
    x, g = seen["x"].reshape(-1, 256), seen["y"].grad.reshape(-1, layer.out_features)
    want = 0.0
    for f, sign in (("ue8m0", 1), ("float32", -1)):
        d = ref.gemm_reference(*ref.quantize_act(x, 128, f), *ref.quantize_weight(layer.weight.detach(), (128, 128), f),
                               out_dtype=torch.float32) - x @ layer.weight.detach().t()
        want += sign * float(((g * d).sum(-1).double() ** 2).sum())
    assert scores["model.layers.1.self_attn.k_proj"] == pytest.approx(want, rel=1e-6)
    tiny_llama.zero_grad(set_to_none=True)
