"""The checkpoint level end to end (audit.run.audit_checkpoint) on synthetic FP8 checkpoints with known answers,
read through formats.FP8Checkpoint; bad checkpoints fail naming the file and tensor."""

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from blockfp8.audit import numerics as ck
from blockfp8.audit import run as levels
from blockfp8.audit.report import write_report_folder
from blockfp8.formats import CheckpointError, FP8Checkpoint
from blockfp8.quant import reference as ref
from blockfp8.testing.synthetic import synthetic_weight, write_fp8_checkpoint


@pytest.fixture
def three_kinds(tmp_path):
    weights = {f"model.layers.{i}.mlp.down_proj": synthetic_weight((300, 520), kind, seed=i)
               for i, kind in enumerate(("gaussian", "pow2", "outlier"))}
    return write_fp8_checkpoint(tmp_path / "ckpt", weights, extra={"model.embed_tokens.weight": torch.randn(64, 32)})


def test_pow2_scales_lose_exactly_nothing_and_outliers_lose_most(three_kinds):
    with FP8Checkpoint(three_kinds) as c:  # the formats reader sees a valid block-FP8 checkpoint
        assert c.block_size == (128, 128) and len(c.fp8) == 3
    report = levels.audit_checkpoint(three_kinds)
    rows = {r["name"].split(".")[2]: r for r in report.layers}
    assert rows["1"]["pow2_block_share"] == 1.0
    assert rows["1"]["bits_lost"] == 0.0 and rows["1"]["rel_err_ue8m0"] == 0.0 and rows["1"]["verdict"] == "safe"
    assert rows["1"]["scale_inflation_max"] == 1.0
    # a dominant outlier, stored exactly at 448 with float32 scales, is re-rounded by UE8M0: that loses most
    assert rows["2"]["bits_lost"] > 1.0 > rows["0"]["bits_lost"] > 0.2, rows
    assert report.summary.worst_layer.startswith("model.layers.2")
    assert report.checkpoint["kind"] == "fp8" and report.checkpoint["skipped"] == 1  # the embedding
    assert all(r["rel_err_fp32"] == 0.0 for r in report.layers)  # float32 scales reproduce the checkpoint


def test_bf16_checkpoint_is_quantized_both_ways(tmp_path):
    tensors = {"model.layers.0.mlp.up_proj.weight": torch.randn(256, 128).bfloat16(),
               "model.embed_tokens.weight": torch.randn(100, 128).bfloat16(),
               "model.norm.weight": torch.ones(128).bfloat16()}
    (tmp_path / "m").mkdir()
    save_file(tensors, str(tmp_path / "m" / "model.safetensors"))
    report = levels.audit_checkpoint(tmp_path / "m")
    assert [r["name"] for r in report.layers] == ["model.layers.0.mlp.up_proj.weight"]
    row = report.layers[0]
    assert row["source"] == "float" and row["rel_err_fp32"] > 0 and 4.5 < row["bits_fp32"] < 6.0
    assert report.checkpoint == {**report.checkpoint, "kind": "float", "skipped": 1}


def test_report_json_schema_finite_and_folder_written(three_kinds, tmp_path):
    report = levels.audit_checkpoint(three_kinds, measure_read=True)
    out = tmp_path / "rep"
    written = write_report_folder(report, out)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in written)  # nothing half-written left behind
    assert {"report.json", "report.md", "bits_lost.png", "scale_inflation.png"} <= set(names)
    data = json.loads((out / "report.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-finite {c}"))
    assert data["schema"] == "blockfp8.audit/1" and data["model"] == str(three_kinds)
    for row in data["layers"]:
        assert {"name", "bits_fp32", "bits_ue8m0", "bits_lost", "verdict"} <= set(row)
    assert {"mean_bits_lost", "max_bits_lost", "verdict", "thresholds", "reasons"} <= set(data["summary"])
    speed = data["run"]["speed"]
    assert speed["bytes"] > 0 and speed["audit_over_read_rate"] > 0 and speed["read_s"] > 0
    hist = data["histograms"]["scale_inflation"]
    assert len(hist["log2_edges"]) == 65 and sum(hist["weights"]) == sum(r["blocks"] for r in data["layers"])
    md = (out / "report.md").read_text()
    assert "Verdict: **unsafe**" in md and "model.layers.2.mlp.down_proj.weight" in md
    assert (out / "bits_lost.png").read_bytes()[:4] == b"\x89PNG"

    def numbers(x):
        if isinstance(x, dict):
            for v in x.values():
                yield from numbers(v)
        elif isinstance(x, list):
            for v in x:
                yield from numbers(v)
        elif isinstance(x, float):
            yield x
    assert all(math.isfinite(v) for v in numbers(data))


# ------------------------------------------------------------------------------------------ bad checkpoints


def _raw_file(tmp_path, tensors):
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path))
    return path


def test_missing_scale_is_named(tmp_path):
    q, _ = ref.quantize_weight(torch.randn(128, 128))
    path = _raw_file(tmp_path, {"layer.weight": q})
    with pytest.raises(CheckpointError, match=r"bad.safetensors.*'layer.weight'.*no scale tensor"):
        levels.audit_checkpoint(path)


@pytest.mark.parametrize("bad,match", [(0.0, "scale of block"), (float("nan"), "scale of block"),
                                       (float("inf"), "scale of block")])
def test_bad_scale_values_are_named(tmp_path, bad, match):
    q, s = ref.quantize_weight(torch.randn(256, 128))
    s[1, 0] = bad
    path = _raw_file(tmp_path, {"layer.weight": q, "layer.weight_scale_inv": s})
    with pytest.raises(CheckpointError, match=rf"bad.safetensors.*'layer.weight'.*{match} \[1, 0\]"):
        levels.audit_checkpoint(path)


def test_nan_codes_and_wrong_scale_shape_are_named(tmp_path):
    q, s = ref.quantize_weight(torch.randn(128, 256))
    q.view(torch.uint8)[0, 0] = 0x7F  # NaN in E4M3FN
    path = _raw_file(tmp_path, {"a.weight": q, "a.weight_scale_inv": s})
    with pytest.raises(CheckpointError, match=r"'a.weight'.*1 NaN codes"):
        levels.audit_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"'a'.*1 NaN codes"):
        ck.audit_fp8_tensor("a", q, s, method="direct")
    path = _raw_file(tmp_path, {"a.weight": q, "a.weight_scale_inv": s[:, :1].contiguous()})
    with pytest.raises(CheckpointError, match=r"'a.weight'.*scale shape \[1, 1\].*expected \[1, 2\]"):
        levels.audit_checkpoint(path)


def test_truncated_checkpoint_fails_before_reading(three_kinds):
    f = three_kinds / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match=r"model.safetensors.*truncated"):
        levels.audit_checkpoint(three_kinds)


def test_ue8m0_claim_is_checked(tmp_path):
    folder = write_fp8_checkpoint(tmp_path / "c", {"l": torch.randn(128, 128)})
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"]["scale_fmt"] = "ue8m0"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"'l.weight_scale_inv'.*not powers of two"):
        levels.audit_checkpoint(folder)
