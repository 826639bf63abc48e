"""Verdicts: thresholds, flips, the report -> AuditVerdict bridge the guard reads, and --emit."""

import json

import pytest

from blockfp8 import atomic
from blockfp8.audit import emit
from blockfp8.audit.report import build_report, write_report_folder
from blockfp8.audit.verdict import Thresholds, VerdictError, load_verdict, model_verdict, summarize
from blockfp8.config import AuditVerdict


def rows(*lost):
    return [{"name": f"l{i}", "bits_fp32": 5.0, "bits_ue8m0": 5.0 - x, "bits_lost": x} for i, x in enumerate(lost)]


def e2e_block(ppl, ppl_ci, kl, kl_ci):
    return {"windows": 8, "seq_len": 16, "tokens": 128,
            "base": {"ppl_base": 10.0, "ppl_base_ci": [9.0, 11.0]},
            "fp32": {"ppl_fp32": 10.1, "ppl_fp32_ci": [9.1, 11.1], "kl_fp32": 0.02, "kl_fp32_ci": [0.01, 0.03],
                     "top1_fp32": 0.9, "top1_fp32_ci": [0.85, 0.95]},
            "ue8m0": {"ppl_ue8m0": 10.1 * (1 + ppl), "ppl_ue8m0_ci": [9.1, 11.1], "kl_ue8m0": 0.02 * (1 + kl),
                      "kl_ue8m0_ci": [0.01, 0.03], "top1_ue8m0": 0.9, "top1_ue8m0_ci": [0.85, 0.95]},
            "ue8m0_vs_fp32": {"ppl_increase": ppl, "ppl_increase_ci": ppl_ci, "kl_increase": kl,
                              "kl_increase_ci": kl_ci, "top1_change": 0.0, "top1_change_ci": [-0.01, 0.01]}}


def report(lost, thresholds=None, e2e=None):
    return build_report(model="m", model_type="llama", level="calibrated", block_size=(128, 128), rows=rows(*lost),
                        thresholds=thresholds or Thresholds(), e2e=e2e)


def test_layer_and_model_verdict_flip_at_the_thresholds():
    t = Thresholds(layer_bits_lost=0.25, mean_bits_lost=0.1, unsafe_layer_share=0.5)
    assert [r["verdict"] for r in report([0.25, 0.2501], t).layers] == ["safe", "unsafe"]
    assert report([0.1, 0.1], t).summary.verdict == "safe"
    r = report([0.1, 0.1001], t)
    assert r.summary.verdict == "unsafe" and "mean bits lost per layer 0.100 > 0.1" in r.summary.reasons[0]
    # share of unsafe layers: 1 of 2 is not more than 0.5; 2 of 3 is
    t = Thresholds(layer_bits_lost=0.25, mean_bits_lost=10, unsafe_layer_share=0.5)
    assert report([0.3, 0.0], t).summary.verdict == "safe"
    r = report([0.3, 0.3, 0.0], t)
    assert r.summary.verdict == "unsafe" and "2/3 layers" in r.summary.reasons[0]
    assert r.summary.thresholds == t.as_dict()


def test_e2e_needs_both_the_size_and_the_interval():
    t = Thresholds(mean_bits_lost=10, unsafe_layer_share=1, ppl_increase=0.01, kl_increase=0.25)
    s = summarize([{**r, "verdict": "safe"} for r in rows(0.0)], t)
    assert model_verdict(s, t, e2e_block(0.02, [0.001, 0.04], 0.1, [0.0, 0.2]))[0] == "unsafe"
    assert model_verdict(s, t, e2e_block(0.02, [-0.001, 0.04], 0.1, [0.0, 0.2]))[0] == "safe"  # CI includes 0
    assert model_verdict(s, t, e2e_block(0.009, [0.001, 0.02], 0.1, [0.0, 0.2]))[0] == "safe"  # below 1%
    verdict, reasons = model_verdict(s, t, e2e_block(0.0, [-0.01, 0.01], 0.3, [0.1, 0.5]))
    assert verdict == "unsafe" and "KL" in reasons[0]


@pytest.mark.parametrize("bad", [{"layer_bits_lost": -1}, {"mean_bits_lost": float("nan")},
                                 {"unsafe_layer_share": 1.5}, {"ppl_increase": True}])
def test_bad_thresholds_are_named(bad):
    with pytest.raises(VerdictError, match=next(iter(bad))):
        Thresholds(**bad)
    with pytest.raises(VerdictError, match="unknown thresholds"):
        Thresholds.from_dict({"layer_bits": 1})


def test_load_verdict_from_file_and_folder(tmp_path):
    unsafe = report([0.5, 0.6])
    write_report_folder(unsafe, tmp_path / "rep")
    for path in (tmp_path / "rep", tmp_path / "rep" / "report.json"):
        v = load_verdict(path)
        assert isinstance(v, AuditVerdict) and v.ue8m0_ok is False and v.model_type == "llama"
        assert "mean 0.550 bit lost per layer" in v.evidence and "report.json" in v.evidence
    safe = atomic.write_json(tmp_path / "safe.json", report([0.0, 0.01]).to_dict())
    assert load_verdict(safe).ue8m0_ok is True


def test_load_verdict_rejects_other_files(tmp_path):
    with pytest.raises(VerdictError, match="cannot read"):
        load_verdict(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(VerdictError, match="not valid JSON"):
        load_verdict(tmp_path / "x.json")
    (tmp_path / "y.json").write_text(json.dumps({"summary": {"verdict": "unsafe"}}))
    with pytest.raises(VerdictError, match="field schema"):
        load_verdict(tmp_path / "y.json")
    r = report([0.5]).to_dict()
    r["summary"]["verdict"] = "maybe"
    (tmp_path / "z.json").write_text(json.dumps(r))
    with pytest.raises(VerdictError, match="summary.verdict"):
        load_verdict(tmp_path / "z.json")


def test_emit_follows_the_verdict():
    unsafe = emit.emit("vllm", report([0.5]))
    assert "export VLLM_USE_DEEP_GEMM=0" in unsafe and "vllm serve m --linear-backend cutlass" in unsafe
    sg = emit.emit("sglang", report([0.5]))
    assert "export SGLANG_ENABLE_JIT_DEEPGEMM=0" in sg and "--fp8-gemm-backend cutlass" in sg
    safe = emit.emit("vllm", report([0.0]))
    assert "VLLM_USE_DEEP_GEMM=0" not in safe and "nothing to set" in safe
    with pytest.raises(ValueError, match="valid values"):
        emit.emit("trt", report([0.0]))
