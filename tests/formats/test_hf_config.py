"""formats.hf_config, the one config.json reader: the facts read from it and its errors."""

from __future__ import annotations

import json

import pytest

from blockfp8.config import ConfigError
from blockfp8.formats.errors import CheckpointError
from blockfp8.formats.hf_config import (
    MAX_CONFIG_BYTES,
    block_config,
    folder_model_type,
    has_experts,
    read_config_json,
    text_model_type,
)

DEEPSEEK_QC = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}


def test_from_hf_config_uses_the_text_model_type():
    cfg = {"model_type": "qwen3_5_moe", "text_config": {"model_type": "qwen3_5_moe_text", "num_experts": 256},
           "quantization_config": DEEPSEEK_QC}
    assert text_model_type(cfg) == "qwen3_5_moe_text" and has_experts(cfg)
    assert block_config(cfg).model_type == "qwen3_5_moe_text"
    assert not has_experts({"model_type": "llama"})
    with pytest.raises(ConfigError, match="no quantization_config"):
        block_config({"model_type": "llama"})



def test_hf_config_facts_from_text_config_or_top_level():
    from blockfp8.formats.hf_config import hidden_size, num_experts

    wrapped = {"model_type": "qwen3_5_moe", "text_config": {"model_type": "qwen3_5_moe_text", "hidden_size": 2048,
                                                            "num_experts": 256}}
    assert hidden_size(wrapped) == 2048 and num_experts(wrapped) == 256
    assert hidden_size({"hidden_size": 576}) == 576 and num_experts({"n_routed_experts": 64}) == 64
    assert hidden_size({}) is None and num_experts({"num_local_experts": True}) == 0


@pytest.mark.parametrize("content,message", [(None, "config.json not found"), ("{not json", "not valid JSON"),
                                             ("[1, 2]", "must hold a JSON object")])
def test_read_errors_name_the_file(content, message, tmp_path):
    if content is not None:
        (tmp_path / "config.json").write_text(content)
    with pytest.raises(CheckpointError, match=message) as info:
        read_config_json(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert folder_model_type(tmp_path) is None, "an unreadable config leaves the model type unknown, no error"


def test_a_huge_config_is_refused_before_parsing(tmp_path):
    (tmp_path / "config.json").write_text(" " * (MAX_CONFIG_BYTES + 1) + "{}")
    with pytest.raises(CheckpointError, match="larger than"):
        read_config_json(tmp_path)


def test_file_or_folder_both_work(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert read_config_json(tmp_path) == read_config_json(tmp_path / "config.json") == {"model_type": "llama"}
    assert folder_model_type(tmp_path) == "llama"
