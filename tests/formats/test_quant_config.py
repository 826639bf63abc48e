"""quantization_config parsing (HF fp8, compressed-tensors), skip-list patterns, and the dict we write."""

import json

import pytest

from blockfp8.config import BlockFP8Config
from blockfp8.formats import CheckpointError, fp8_quant_config_dict, matches_any, parse_quant_config, read_quant_config

HF = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
CT = {
    "quant_method": "compressed-tensors",
    "format": "float-quantized",
    "config_groups": {
        "group_0": {
            "targets": ["Linear"],
            "weights": {"num_bits": 8, "type": "float", "strategy": "block", "block_structure": [128, 128],
                        "dynamic": False, "symmetric": True},
            "input_activations": {"num_bits": 8, "type": "float", "strategy": "group", "group_size": 128,
                                  "dynamic": True, "symmetric": True},
        }
    },
    "ignore": ["lm_head", "re:.*mlp.gate$"],
}


def test_hf_fp8_reads_both_skip_lists_and_ue8m0():
    qc = parse_quant_config({**HF, "scale_fmt": "ue8m0", "modules_to_not_convert": ["lm_head"],
                             "ignored_layers": ["model.layers.0.mlp.down_proj", "lm_head"]}, "x/config.json")
    assert qc.quant_method == "fp8" and qc.block_size == (128, 128) and qc.scale_fmt == "ue8m0"
    assert qc.ignored == ("lm_head", "model.layers.0.mlp.down_proj")
    assert qc.scale_suffix == "weight_scale_inv"
    assert qc.is_ignored("model.layers.0.mlp.down_proj") and not qc.is_ignored("model.layers.1.mlp.down_proj")


def test_compressed_tensors_block():
    qc = parse_quant_config(CT, "x/config.json")
    assert qc.quant_method == "compressed-tensors" and qc.block_size == (128, 128) and qc.scale_fmt == "float32"
    assert qc.scale_suffix == "weight_scale"
    assert qc.is_ignored("model.layers.3.mlp.gate") == "re:.*mlp.gate$"
    assert qc.is_ignored("model.layers.3.mlp.gate_proj") is None
    # the HF form of it is what BlockFP8Config reads
    cfg = BlockFP8Config.from_hf_quant_config(qc.as_hf_dict())
    assert cfg.weight_block_size == (128, 128) and set(cfg.ignored_layers) == {"lm_head", "re:.*mlp.gate$"}


@pytest.mark.parametrize("qc,field", [
    ({**HF, "quant_method": "awq"}, "quantization_config.quant_method"),
    ({**HF, "fmt": "e5m2"}, "quantization_config.fmt"),
    ({**HF, "activation_scheme": "static"}, "quantization_config.activation_scheme"),
    ({**HF, "weight_block_size": None}, "quantization_config.weight_block_size"),
    ({**HF, "weight_block_size": [128]}, "quantization_config.weight_block_size"),
    ({**HF, "weight_block_size": [128, 0]}, "quantization_config.weight_block_size"),
    ({**HF, "scale_fmt": "e4m3"}, "quantization_config.scale_fmt"),
    ({**HF, "ignored_layers": "lm_head"}, "quantization_config.ignored_layers"),
    ({**CT, "config_groups": {}}, "quantization_config.config_groups"),
    ({**CT, "format": "int-quantized"}, "config_groups.group_0.format"),
    ({**CT, "config_groups": {"g": {**CT["config_groups"]["group_0"], "weights": {
        **CT["config_groups"]["group_0"]["weights"], "strategy": "channel"}}}}, "config_groups.g.weights.strategy"),
    ({**CT, "config_groups": {"g": {**CT["config_groups"]["group_0"], "input_activations": {
        **CT["config_groups"]["group_0"]["input_activations"], "group_size": 64}}}},
     "config_groups.g.input_activations.group_size"),
])
def test_bad_configs_name_the_field(qc, field):
    with pytest.raises(CheckpointError) as e:
        parse_quant_config(qc, "some/config.json")
    assert "some/config.json" in str(e.value) and field in str(e.value)


def test_ct_groups_must_agree_on_block_size():
    g = CT["config_groups"]["group_0"]
    other = {**g, "weights": {**g["weights"], "block_structure": [64, 64]}}
    with pytest.raises(CheckpointError, match="differs from another group"):
        parse_quant_config({**CT, "config_groups": {"a": g, "b": other}}, "c.json")


def test_read_quant_config_from_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert read_quant_config(tmp_path) is None
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": HF}))
    assert read_quant_config(tmp_path).block_size == (128, 128)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        read_quant_config(tmp_path)
    with pytest.raises(CheckpointError, match="config.json not found"):
        read_quant_config(tmp_path / "nowhere")


@pytest.mark.parametrize("name,patterns,hit", [
    ("lm_head", ["lm_head"], "lm_head"),
    ("model.layers.0.mlp.down_proj", ["down_proj"], "down_proj"),
    ("model.layers.0.mlp.down_proj", ["model.layers.0"], "model.layers.0"),
    ("model.layers.10.mlp.down_proj", ["model.layers.1"], None),  # no partial component match
    ("model.layers.0.mlp.gate_proj", ["gate"], None),
    ("model.layers.7.self_attn.q_proj", ["*.self_attn.*"], "*.self_attn.*"),
    ("model.layers.7.self_attn.q_proj", ["re:.*layers\\.7\\."], "re:.*layers\\.7\\."),
    ("model.layers.7.self_attn.q_proj", ["re:layers"], None),  # re.match anchors at the start
])
def test_matches_any(name, patterns, hit):
    assert matches_any(name, patterns) == hit


def test_written_config_has_both_skip_lists_and_reads_back():
    d = fp8_quant_config_dict((128, 64), "ue8m0", ["lm_head", "model.layers.0.mlp.down_proj", "lm_head"])
    assert d["modules_to_not_convert"] == d["ignored_layers"] == ["lm_head", "model.layers.0.mlp.down_proj"]
    assert d["scale_fmt"] == "ue8m0" and d["weight_block_size"] == [128, 64]
    qc = parse_quant_config(d)
    assert qc.block_size == (128, 64) and qc.scale_fmt == "ue8m0"
    assert "scale_fmt" not in fp8_quant_config_dict((128, 128))
