"""An eval variant can be an audit plan (`blockfp8: {plan: report.json}`): validated with the config, built as
UE8M0 scales everywhere but the plan's float32 layers."""

import json

import pytest
import torch

from blockfp8.eval.config import parse_config
from blockfp8.eval.runner import EvalError, build_variant
from blockfp8.nn import BlockFP8Linear

transformers = pytest.importorskip("transformers")
KEEP = ["model.layers.0.mlp.down_proj", "model.layers.1.self_attn.q_proj"]


def _config(tmp_path, plan_value, extra=None):
    raw = {"model": "smollm2", "task": "lambada", "num_questions": 5,
           "variants": [{"name": "fp32", "blockfp8": {"scale_fmt": "float32"}, "accuracy_threshold": 0.1},
                        {"name": "plan", "blockfp8": {"plan": plan_value, **(extra or {})},
                         "accuracy_threshold": 0.1}]}
    return parse_config(raw, source=str(tmp_path / "cfg.yaml"))


def _write_report(folder, layers):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps({"plan": {"float32_layers": layers}}))


def test_plan_variant_is_read_relative_to_the_config(tmp_path):
    _write_report(tmp_path / "rep", KEEP)
    cfg = _config(tmp_path, "rep/report.json")
    v = cfg.variant("plan")
    assert v.plan_layers == frozenset(KEEP) and cfg.variant("fp32").plan_layers is None
    assert v.quant_config().scale_fmt is None
    assert _config(tmp_path, str(tmp_path / "rep")).variant("plan").plan_layers == frozenset(KEEP)


@pytest.mark.parametrize("value, extra, match", [
    ("missing.json", None, r"variants\[1\].blockfp8.plan': .*missing.json: cannot read"),
    (3, None, "must be the path of an audit report"),
    ("rep/report.json", {"scale_fmt": "ue8m0"}, "takes its scale formats from the plan"),
    ("bad/report.json", None, "field plan.float32_layers is missing"),
])
def test_bad_plans_are_named(tmp_path, value, extra, match):
    _write_report(tmp_path / "rep", KEEP)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "report.json").write_text(json.dumps({"summary": {}}))
    with pytest.raises(ValueError, match=match):
        _config(tmp_path, value, extra)


@torch.no_grad()
def test_plan_variant_quantizes_per_layer(tmp_path):
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=256, intermediate_size=384, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(cfg).eval()
    _write_report(tmp_path / "rep", KEEP)
    variant = _config(tmp_path, "rep/report.json").variant("plan")
    model, report = build_variant(base, variant, "cpu", copy_model=True)
    fmts = {n: (str(m.decision.act_scale_fmt), str(m.decision.weight_scale_fmt))
            for n, m in model.named_modules() if isinstance(m, BlockFP8Linear)}
    assert len(fmts) == 14 and len(report.converted) == 14 and "lm_head" in report.skipped
    assert {n for n, f in fmts.items() if f == ("float32", "float32")} == set(KEEP)
    assert all(f == ("ue8m0", "ue8m0") for n, f in fmts.items() if n not in KEEP)
    _write_report(tmp_path / "other", ["model.layers.7.mlp.up_proj"])
    with pytest.raises(EvalError, match="plan names layers this model does not quantize: model.layers.7"):
        build_variant(base, _config(tmp_path, "other/report.json").variant("plan"), "cpu", copy_model=True)
