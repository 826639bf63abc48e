"""BlockFP8Config: validation naming the field, HF quantization_config, CLI flags."""

from __future__ import annotations

import dataclasses

import pytest

from blockfp8.config import AuditVerdict, BlockFP8Config, ConfigError

DEEPSEEK_QC = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}


def test_defaults_leave_everything_to_the_policy():
    c = BlockFP8Config()
    assert (c.scale_fmt, c.use_deep_gemm, c.moe_use_deep_gemm, c.linear_backend, c.moe_backend, c.audit) == \
        (None, None, None, "auto", "auto", None)
    assert c.weight_block_size == (128, 128) and c.ignored_layers == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.use_deep_gemm = True


@pytest.mark.parametrize("kwargs,field", [
    ({"weight_block_size": (128,)}, "weight_block_size"),
    ({"weight_block_size": (128, 0)}, "weight_block_size"),
    ({"weight_block_size": (128.0, 128)}, "weight_block_size"),
    ({"activation_scheme": "static"}, "activation_scheme"),
    ({"scale_fmt": "e8m0"}, "scale_fmt"),
    ({"use_deep_gemm": "yes"}, "use_deep_gemm"),
    ({"moe_use_deep_gemm": 1}, "moe_use_deep_gemm"),
    ({"linear_backend": "cutlass"}, "linear_backend"),
    ({"moe_backend": ""}, "moe_backend"),
    ({"ignored_layers": "lm_head"}, "ignored_layers"),
    ({"model_type": ""}, "model_type"),
    ({"audit": {"ue8m0_ok": False}}, "audit"),
])
def test_bad_field_is_named(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        BlockFP8Config(**kwargs)


def test_normalisation():
    c = BlockFP8Config(weight_block_size=[128, 64], linear_backend="Triton", ignored_layers=["lm_head"],
                       scale_fmt="UE8M0")
    assert (c.weight_block_size, c.linear_backend, c.ignored_layers, c.scale_fmt) == \
        ((128, 64), "triton", ("lm_head",), "ue8m0")


def test_from_hf_quant_config_reads_both_skip_lists_and_scale_fmt():
    qc = {**DEEPSEEK_QC, "scale_fmt": "ue8m0", "modules_to_not_convert": ["lm_head", "mlp.gate"],
          "ignored_layers": ["mlp.gate", "model.embed_tokens"]}
    c = BlockFP8Config.from_hf_quant_config(qc, model_type="deepseek_v3")
    assert c.ignored_layers == ("mlp.gate", "model.embed_tokens", "lm_head")
    assert (c.scale_fmt, c.model_type, c.weight_block_size) == ("ue8m0", "deepseek_v3", (128, 128))


@pytest.mark.parametrize("qc,field", [
    ({**DEEPSEEK_QC, "quant_method": "gptq"}, "quant_method"),
    ({**DEEPSEEK_QC, "fmt": "e5m2"}, "fmt"),
    ({k: v for k, v in DEEPSEEK_QC.items() if k != "weight_block_size"}, "weight_block_size is missing"),
    ({**DEEPSEEK_QC, "activation_scheme": "static"}, "quantization_config: activation_scheme"),
    ({**DEEPSEEK_QC, "modules_to_not_convert": "lm_head"}, "modules_to_not_convert"),
    ([1, 2], "must be a JSON object"),
])
def test_from_hf_quant_config_errors_name_the_field(qc, field):
    with pytest.raises(ConfigError, match=field):
        BlockFP8Config.from_hf_quant_config(qc)


def test_deep_gemm_knob_moe_falls_back_to_global():
    c = BlockFP8Config(use_deep_gemm=False)
    assert c.deep_gemm_knob("moe") == (False, "use_deep_gemm")
    c = BlockFP8Config(use_deep_gemm=False, moe_use_deep_gemm=True)
    assert (c.deep_gemm_knob("linear"), c.deep_gemm_knob("moe")) == ((False, "use_deep_gemm"),
                                                                     (True, "moe_use_deep_gemm"))


def test_audit_verdict_validation():
    assert AuditVerdict(ue8m0_ok=False, evidence="0.4 bit lost").model_type is None
    with pytest.raises(ConfigError, match="evidence"):
        AuditVerdict(ue8m0_ok=False, evidence=" ")
    with pytest.raises(ConfigError, match="ue8m0_ok"):
        AuditVerdict(ue8m0_ok="no", evidence="x")
