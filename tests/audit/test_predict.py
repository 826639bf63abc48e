"""The task-level prediction and its calibrated rule (audit.predict): ratios fitted through the origin, intervals
that widen with the calibration's noise, a loss boundary between harmless and harmful points, named errors."""

import json
import math

import pytest

from blockfp8.audit import predict


def point(audit_acc, task_acc, p, *, audit_ppl=1.0, task_ppl=2.0, items=1000, discordant=100, task="lambada",
          target_ppl=None):
    audit = {"acc_change_pp": audit_acc, "ppl_increase_pct": audit_ppl}
    if target_ppl is not None:
        audit["target_ppl_increase_pct"] = target_ppl
    return {"model": "m", "task": task, "items": items, "pair": ["ue8m0", "fp32"],
            "audit": audit,
            "task_delta": {"acc_change_pp": task_acc, "mcnemar_p": p, "discordant": discordant,
                           "ppl_increase_pct": task_ppl, "ppl_increase_ci": [task_ppl - 1, task_ppl + 1]}}


def test_ratio_noise_and_boundary():
    points = [point(-0.2, -0.4, 0.5), point(-0.3, -0.6, 0.3), point(-0.5, -1.0, 0.01)]
    cal = predict.calibrate(points, "lambada")
    assert cal.acc_ratio == pytest.approx(2.0) and cal.ppl_ratio == pytest.approx(2.0)
    # residuals are 0: the sd is the task's paired noise sqrt(100) / 1000 items = 1 pp, and the ppl interval's
    assert cal.acc_sd == pytest.approx(1.0) and cal.ppl_sd == pytest.approx(1 / predict.Z95)
    assert cal.loss_boundary_pp == pytest.approx((0.6 + 1.0) / 2) and cal.separable
    delta = {"acc_change": -0.0045, "acc_change_ci": [-0.006, -0.002], "ppl_increase": 0.01,
             "ppl_increase_ci": [0.005, 0.015]}
    p = predict.predict(delta, cal)
    assert p["acc_change_pp"]["value"] == pytest.approx(-0.9) and p["unsafe"]
    lo, hi = p["acc_change_pp"]["interval"]
    assert lo == pytest.approx(-1.2 - predict.Z95) and hi == pytest.approx(-0.4 + predict.Z95)
    assert not predict.predict({**delta, "acc_change": -0.003}, cal)["unsafe"]  # 0.6 pp < 0.8 pp boundary


def test_boundary_without_harmful_points_and_not_separable():
    cal = predict.calibrate([point(-0.2, -0.4, 0.5), point(-0.4, -0.8, 0.2)], "lambada")
    assert cal.loss_boundary_pp == pytest.approx(0.8 + predict.Z95 * cal.acc_sd) and cal.separable
    mixed = [point(-0.2, -0.4, 0.01), point(-0.3, -0.6, 0.5), point(-0.5, -1.0, 0.01)]
    cal = predict.calibrate(mixed, "lambada")
    assert not cal.separable and cal.loss_boundary_pp == pytest.approx(0.8)  # one error either way: the larger cut


def test_points_without_perplexity_and_other_tasks():
    gsm = point(-0.2, -0.3, 0.6, task="gsm8k")
    del gsm["task_delta"]["ppl_increase_pct"], gsm["task_delta"]["ppl_increase_ci"]
    points = predict.check_points([gsm, point(-0.2, -0.4, 0.5)], "x")
    assert predict.calibrate(points, "gsm8k").ppl_ratio == 0.0
    with pytest.raises(predict.CalibrationError, match="no calibration points for task 'mmlu'"):
        predict.calibrate(points, "mmlu")


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d.update(schema="x"), "field schema"),
    (lambda d: d.update(points=[]), "points must be a non-empty list"),
    (lambda d: d["points"][0].pop("items"), r"points\[0\].items is missing"),
    (lambda d: d["points"][0]["audit"].update(acc_change_pp=math.inf), r"points\[0\].audit.acc_change_pp"),
    (lambda d: d["points"][0]["task_delta"].update(ppl_increase_ci=[1]), "ppl_increase_ci must be"),
    (lambda d: d["points"][0]["audit"].update(target_ppl_increase_pct="x"), r"audit.target_ppl_increase_pct"),
])
def test_bad_calibration_files_are_named(tmp_path, mutate, match):
    data = {"schema": predict.CALIBRATION_SCHEMA, "points": [point(-0.2, -0.4, 0.5)]}
    mutate(data)
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(data))
    with pytest.raises(predict.CalibrationError, match=match) as err:
        predict.calibration_for("lambada", path)
    assert str(path) in str(err.value)
    with pytest.raises(predict.CalibrationError, match="cannot read"):
        predict.load_points(tmp_path / "missing.json")


def test_the_shipped_calibration_loads():
    cal, source = predict.calibration_for("lambada")
    assert source.endswith(predict.CALIBRATION_DATA) and cal.points >= 3 and cal.acc_ratio > 0
    assert "smollm2" in cal.models and cal.loss_boundary_pp > 0


def test_target_word_perplexity_predicts_task_perplexity_where_measured():
    # every-position perplexity says ~nothing (+0.1%); the target words carry the task's +8%
    points = [point(-0.2, -0.4, 0.5, audit_ppl=1.0, task_ppl=3.0, target_ppl=2.0),
              point(-0.3, -0.6, 0.3, audit_ppl=0.1, task_ppl=8.0, target_ppl=5.3)]
    cal = predict.calibrate(points, "lambada")
    assert cal.target_points == 2 and cal.target_ppl_ratio == pytest.approx((2 * 3 + 5.3 * 8) / (4 + 5.3 ** 2))
    assert cal.target_ppl_sd > 0 and cal.as_dict()["target_ppl_ratio"] == cal.target_ppl_ratio
    delta = {"acc_change": -0.003, "acc_change_ci": [-0.005, -0.001], "ppl_increase": 0.001,
             "ppl_increase_ci": [0.0, 0.002]}
    by_all = predict.predict(delta, cal)["ppl_increase_pct"]
    assert by_all["from"] == "all_positions" and by_all["value"] == pytest.approx(cal.ppl_ratio * 0.1)
    p = predict.predict({**delta, "target_ppl_increase": 0.05, "target_ppl_increase_ci": [0.03, 0.08]}, cal)
    q = p["ppl_increase_pct"]
    assert q["from"] == "target_words" and q["value"] == pytest.approx(cal.target_ppl_ratio * 5)
    assert q["interval"] == pytest.approx([cal.target_ppl_ratio * 3 - predict.Z95 * cal.target_ppl_sd,
                                           cal.target_ppl_ratio * 8 + predict.Z95 * cal.target_ppl_sd])
    assert p["audit"]["target_ppl_increase_pct"] == {"value": pytest.approx(5.0), "ci": pytest.approx([3.0, 8.0])}
    assert "(from the target words)" in predict_line(p)
    # below MIN_TARGET_POINTS points with target words the predictor is not used
    one = predict.calibrate([points[0], point(-0.3, -0.6, 0.3)], "lambada")
    assert one.target_ppl_ratio is None and one.target_points == 1
    assert predict.predict({**delta, "target_ppl_increase": 0.05, "target_ppl_increase_ci": [0.03, 0.08]},
                           one)["ppl_increase_pct"]["from"] == "all_positions"
    rows = predict.leave_one_out(points + [point(-0.5, -1.0, 0.01, target_ppl=1.0)], "lambada")
    assert [r["ppl_from"] for r in rows] == ["target_words"] * 3


def predict_line(p):
    from blockfp8.audit.verdict import prediction_line

    return prediction_line(p, "the plan")


def test_leave_one_out_predicts_each_point_from_the_others():
    points = [point(-0.2, -0.4, 0.5), point(-0.3, -0.6, 0.3), point(-0.5, -1.0, 0.01), point(-0.1, -5.0, 0.01)]
    rows = predict.leave_one_out(points, "lambada")
    assert len(rows) == 4 and all(r["ppl_covered"] for r in rows)
    assert rows[0]["acc_covered"] and not rows[3]["acc_covered"]  # -5 pp is far outside a ratio-2 prediction


def _e2e(acc_drop: float):
    import numpy as np

    from blockfp8.audit import e2e

    n, L = 8, 11
    rng = np.random.default_rng(0)
    nll = rng.uniform(30, 40, n)
    hit = np.full(n, 4.0)
    sums = {"nll_base": nll, "hit_base": hit}
    for v, extra, h in (("fp32", 0.2, 0.0), ("ue8m0", 0.6, acc_drop)):
        sums.update({f"nll_{v}": nll + extra, f"kl_{v}": np.full(n, 0.3 + extra), f"agree_{v}": np.full(n, 9.0),
                     f"hit_{v}": hit - h})
    return e2e.summarize(sums, seq_len=L, n_boot=200)


def _cal_file(tmp_path, boundary_points):
    path = tmp_path / "cal.json"
    path.write_text(json.dumps({"schema": predict.CALIBRATION_SCHEMA, "points": boundary_points}))
    return path


def test_the_verdict_follows_the_prediction_and_given_thresholds(tmp_path):
    from blockfp8.audit.report import build_report
    from blockfp8.audit.verdict import Thresholds

    cal = _cal_file(tmp_path, [point(-0.2, -0.4, 0.5), point(-1.0, -2.0, 0.01)])  # ratio 2, boundary 1.2 pp
    rows = [{"name": "a", "bits_fp32": 5.0, "bits_ue8m0": 4.0, "bits_lost": 1.0}]  # every old threshold crossed

    def judge(acc_drop, **kw):
        return build_report(model="m", level="calibrated+e2e", block_size=(128, 128), rows=rows,
                            thresholds=kw.pop("thresholds", Thresholds()), e2e=_e2e(acc_drop),
                            verdict_calibration=cal, **kw)

    small = judge(0.0)  # no accuracy change: safe, whatever the bits say
    assert small.safe and "predicted lambada effect of UE8M0" in small.summary.reasons[0]
    p = small.summary.prediction
    assert p["ue8m0"]["acc_change_pp"]["value"] == 0.0 and p["calibration"]["source"] == str(cal)
    big = judge(0.1)  # 0.1 of 10 targets per window lost = -1 pp next-token accuracy -> predicted -2 pp
    assert not big.safe and big.summary.prediction["ue8m0"]["acc_change_pp"]["value"] == pytest.approx(-2.0)
    assert "> calibrated loss boundary 1.20 pp" in big.summary.reasons[0]
    flagged = judge(0.0, given_thresholds=["mean_bits_lost"])  # the user's flag still applies
    assert not flagged.safe and flagged.summary.reasons == ("mean bits lost per layer 1.000 > 0.1",)
    custom = judge(0.0, thresholds=Thresholds(mean_bits_lost=0.5))  # library: a non-default value counts as given
    assert not custom.safe
    no_e2e = build_report(model="m", level="calibrated", block_size=(128, 128), rows=rows, thresholds=Thresholds())
    assert not no_e2e.safe and no_e2e.summary.prediction is None  # without e2e the thresholds decide


def test_rejudge_cli_uses_another_calibration_and_keeps_the_command(tmp_path, capsys):
    from blockfp8.audit.report import AuditReport, build_report, write_report_folder
    from blockfp8.audit.verdict import Thresholds
    from blockfp8.cli.main import main

    rows = [{"name": "a", "bits_fp32": 5.0, "bits_ue8m0": 4.9, "bits_lost": 0.1, "act_bits_lost": 0.1,
             "weight_bits_lost": 0.0, "act_crest": 3.0, "act_outlier_channels": 0, "act_group_dominance": 0.1}]
    lenient = _cal_file(tmp_path, [point(-0.2, -0.4, 0.5), point(-1.0, -2.0, 0.01)])
    report = build_report(model="m", level="calibrated+e2e", block_size=(128, 128), rows=rows,
                          thresholds=Thresholds(), e2e=_e2e(0.1), verdict_calibration=lenient,
                          run={"command": "blockfp8 audit --model m --e2e"})
    write_report_folder(report, tmp_path / "rep")
    strict = tmp_path / "strict.json"
    strict.write_text(json.dumps({"schema": predict.CALIBRATION_SCHEMA,
                                  "points": [point(-0.05, -0.1, 0.5), point(-0.2, -0.4, 0.01)]}))
    assert not report.safe
    argv = ["audit", "--rejudge", str(tmp_path / "rep" / "report.json"), "--json", str(tmp_path / "out.json")]
    assert main([*argv, "--verdict-calibration", str(lenient), "--task", "lambada"]) == 0
    again = AuditReport.load(tmp_path / "out.json")
    assert again.to_dict()["summary"] == report.to_dict()["summary"]  # same measurements, same calibration
    assert again.run["command"] == "blockfp8 audit --model m --e2e"
    assert main([*argv, "--verdict-calibration", str(tmp_path / "missing.json")]) == 1
    assert "missing.json: cannot read" in capsys.readouterr().err
    assert main([*argv, "--verdict-calibration", str(lenient), "--task", "gsm8k"]) == 1
    assert "no calibration points for task 'gsm8k'" in capsys.readouterr().err
    assert main([*argv, "--mean-bits-lost", "0.05", "--verdict-calibration", str(strict)]) == 0
    flagged = AuditReport.load(tmp_path / "out.json")
    assert any("mean bits lost per layer 0.100 > 0.05" in r for r in flagged.summary.reasons)
