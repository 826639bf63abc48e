"""`blockfp8 calibrate`: audit report + eval results -> calibration points the verdict reads back
(`--verdict-calibration`); bad inputs exit 1 naming the file and field."""

import json

import pytest

from blockfp8.audit import predict
from blockfp8.cli.main import main
from blockfp8.eval.calibration import audit_variant, calibration_points


def _e2e():
    e = {"tokens": 4096, "base": {"ppl_base": 10.0, "acc_base": 0.40}}
    for v, ppl, acc in (("fp32", 10.1, 0.398), ("ue8m0", 10.3, 0.393), ("plan", 10.12, 0.3975)):
        e[v] = {f"ppl_{v}": ppl, f"acc_{v}": acc}
    return e


def _results(n=200):
    def variant(settings, flips, shift):
        correct = "".join("1" if i % 3 == 0 and i >= 3 * flips else "0" for i in range(n))  # flips: items lost
        return {"blockfp8": settings, "accuracy": correct.count("1") / n,
                "per_item": {"correct": correct, "loglik": [-2.0 - shift - 0.01 * (i % 7) for i in range(n)]}}

    return {"config": {"task": "lambada", "num_questions": n},
            "variants": {"bf16": variant(None, 0, 0.0), "fp8-float32": variant({"scale_fmt": "float32"}, 2, 0.01),
                         "fp8-ue8m0": variant({"scale_fmt": "ue8m0"}, 9, 0.04),
                         "plan": variant({"plan": "r.json", "plan_float32_layers": []}, 3, 0.012)}}


def test_variants_map_to_audit_variants():
    plan = {"plan": "x", "plan_float32_layers": ["a", "b"]}
    assert [audit_variant(s, ["b", "a"]) for s in (None, {}, {"scale_fmt": "ue8m0"}, plan)] == \
        ["base", "fp32", "ue8m0", "plan"]
    assert audit_variant(plan, ["a"]) is None and audit_variant(plan) is None  # another plan: not paired


def test_points_pair_what_both_files_hold():
    points = calibration_points({"model": "m", "e2e": _e2e(), "plan": {"float32_layers": []}}, _results(), "r.json",
                                "e.json")
    pairs = {tuple(p["pair"]): p for p in points}
    assert set(pairs) == {("fp32", "base"), ("ue8m0", "base"), ("plan", "base"), ("ue8m0", "fp32"), ("plan", "fp32")}
    p = pairs[("ue8m0", "fp32")]
    assert p["audit"]["acc_change_pp"] == pytest.approx(-0.5) and p["audit"]["ppl_increase_pct"] == pytest.approx(
        100 * (10.3 / 10.1 - 1))
    assert p["variants"] == ["fp8-ue8m0", "fp8-float32"] and p["items"] == 200
    assert p["task_delta"]["ppl_increase_pct"] > 0 and 0 <= p["task_delta"]["mcnemar_p"] <= 1
    assert "target_ppl_increase_pct" not in p["audit"]  # this audit measured no target words
    predict.check_points(points, "x")  # the audit side accepts them
    e = _e2e()
    for v, tppl in (("base", 20.0), ("fp32", 20.4), ("ue8m0", 21.0), ("plan", 21.5)):
        e[v][f"tppl_{v}"] = tppl
    with_words = calibration_points({"model": "m", "e2e": e, "plan": {"float32_layers": []}}, _results(), "r.json",
                                    "e.json")
    by_pair = {tuple(q["pair"]): q["audit"]["target_ppl_increase_pct"] for q in with_words}
    assert by_pair[("ue8m0", "fp32")] == pytest.approx(100 * (21.0 / 20.4 - 1))
    assert by_pair[("plan", "base")] == pytest.approx(100 * (21.5 / 20.0 - 1))
    predict.check_points(with_words, "x")


def test_cli_writes_appends_and_feeds_the_verdict(tmp_path, capsys):
    (tmp_path / "r.json").write_text(json.dumps({"model": "m", "e2e": _e2e(), "plan": {"float32_layers": []}}))
    (tmp_path / "e.json").write_text(json.dumps(_results()))
    out = tmp_path / "cal.json"
    argv = ["calibrate", "--audit", str(tmp_path / "r.json"), "--eval", str(tmp_path / "e.json"), "-o", str(out)]
    assert main(argv) == 0 and "5 points" in capsys.readouterr().out
    assert main([*argv, "--append"]) == 0 and "10 points" in capsys.readouterr().out
    cal, source = predict.calibration_for("lambada", out)
    assert source == str(out) and cal.points == 10 and cal.acc_ratio > 0


@pytest.mark.parametrize("report, match", [
    ({"model": "m"}, "field e2e is missing"),
    ({"model": "m", "e2e": {**_e2e(), "plan": {"ppl_plan": 1.0}}, "plan": {"float32_layers": []}},
     "e2e.plan.acc_plan is missing"),
])
def test_bad_inputs_exit_1_naming_the_field(tmp_path, capsys, report, match):
    (tmp_path / "r.json").write_text(json.dumps(report))
    (tmp_path / "e.json").write_text(json.dumps(_results()))
    assert main(["calibrate", "--audit", str(tmp_path / "r.json"), "--eval", str(tmp_path / "e.json"), "-o",
                 str(tmp_path / "cal.json")]) == 1
    err = capsys.readouterr().err
    assert match in err and "r.json" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "cal.json").exists()
