"""AuditReport: the report JSON round trip (keys, order, values), reading one back with named errors, and the
printers that read it."""

import json

import pytest

from blockfp8 import atomic
from blockfp8.audit.render import render_check_summary, render_markdown, render_text
from blockfp8.audit.report import AuditReport, build_report, comparable, write_report_folder
from blockfp8.audit.verdict import Thresholds, VerdictError

TOP_KEYS = ["schema", "model", "model_type", "level", "block_size", "layers", "summary"]
SUMMARY_KEYS = ["layers", "mean_bits_fp32", "mean_bits_ue8m0", "mean_bits_lost", "max_bits_lost", "worst_layer",
                "unsafe_layers", "unsafe_layer_share", "verdict", "reasons", "thresholds"]


def checkpoint_report(**extra):
    rows = [{"name": f"l{i}.weight", "shape": [256, 128], "bits_fp32": 7.0, "bits_ue8m0": 7.0 - x, "bits_lost": x,
             "rel_err_ue8m0": 0.01, "scale_inflation_mean": 1.4, "pow2_block_share": 0.0}
            for i, x in enumerate((0.1, 1.9, 0.3))]
    return build_report(model="ck", model_type="llama", level="checkpoint", block_size=(128, 128), rows=rows,
                        thresholds=Thresholds(), histograms={"weights": [1] * 64},
                        checkpoint={"path": "ck", "kind": "fp8", "tensors": 3, "bytes": 10, "skipped": 0},
                        run={"seconds": 0.5}, **extra)


def test_json_keys_are_in_the_documented_order_and_round_trip():
    report = checkpoint_report()
    d = report.to_dict()
    assert list(d) == [*TOP_KEYS, "histograms", "checkpoint", "run"]
    assert list(d["summary"]) == SUMMARY_KEYS and list(d["layers"][1])[-1] == "verdict"
    assert d["block_size"] == [128, 128] and d["histograms"]["scale_inflation"]["weights"] == [1] * 64
    assert len(d["histograms"]["scale_inflation"]["log2_edges"]) == 65
    text = json.dumps(d, indent=2)
    back = AuditReport.from_dict(json.loads(text))
    assert back == report and json.dumps(back.to_dict(), indent=2) == text
    assert comparable(d) == {k: v for k, v in d.items() if k != "run"}


def test_with_run_adds_to_run_only():
    report = checkpoint_report()
    again = report.with_run(command="blockfp8 audit ck")
    assert again.run == {"seconds": 0.5, "command": "blockfp8 audit ck"} and report.run == {"seconds": 0.5}
    assert comparable(again.to_dict()) == comparable(report.to_dict())


def test_non_finite_numbers_are_refused_when_building():
    rows = [{"name": "l", "bits_fp32": float("nan"), "bits_ue8m0": 1.0, "bits_lost": 0.0}]
    with pytest.raises(ValueError):
        build_report(model="m", level="weights", block_size=(128, 128), rows=rows, thresholds=Thresholds())


def test_json_writer_refuses_nan_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        atomic.write_json(tmp_path / "r.json", {"x": float("nan")})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d.pop("schema"), "field schema"),
    (lambda d: d["summary"].pop("verdict"), "summary.verdict"),
    (lambda d: d["summary"].pop("worst_layer"), "summary.worst_layer is missing"),
    (lambda d: d["summary"].pop("reasons"), "summary.reasons is missing"),
    (lambda d: d.pop("layers"), "field layers is missing"),
])
def test_from_dict_names_what_is_wrong(mutate, match):
    d = checkpoint_report().to_dict()
    mutate(d)
    with pytest.raises(VerdictError, match=rf"^r.json: .*{match}"):
        AuditReport.from_dict(d, "r.json")


def test_load_reads_the_written_folder(tmp_path):
    report = checkpoint_report()
    written = write_report_folder(report, tmp_path / "rep")
    assert [p.name for p in written][:2] == ["report.json", "report.md"]
    assert AuditReport.load(tmp_path / "rep" / "report.json") == report
    with pytest.raises(VerdictError, match="cannot read"):
        AuditReport.load(tmp_path / "rep" / "missing.json")


def test_printers_read_the_report():
    report = checkpoint_report()
    text = render_text(report)
    assert text.startswith("checkpoint audit of ck: block [128, 128], 3 layers")
    assert "pow2_block_share" in text and "verdict for UE8M0 scales: UNSAFE" in text
    top = render_text(report, top=1).splitlines()
    assert top[3].startswith("l1.weight") and not any(line.startswith("l0.weight") for line in top)
    assert "== checkpoint ck: 3 tensors (fp8) ==" in render_check_summary(report)
    md = render_markdown(report)
    assert "Level: **checkpoint**; block size [128, 128]; model type `llama`." in md and "Verdict: **unsafe**" in md
