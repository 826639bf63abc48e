"""Planning the checkpoint level (audit.plan): which tensors, which block size, what is skipped and why."""

import json

import pytest
import torch
from safetensors.torch import save_file

from blockfp8.audit.plan import UNQUANTIZED_TENSORS, OpenCheckpoint, plan_checkpoint
from blockfp8.formats import CheckpointError
from blockfp8.testing.synthetic import synthetic_weight, write_fp8_checkpoint


def test_float_checkpoint_skips_embeddings_and_lm_head(tmp_path):
    assert UNQUANTIZED_TENSORS == ("lm_head", "embed")
    tensors = {"model.layers.0.mlp.up_proj.weight": torch.randn(256, 128).bfloat16(),
               "model.embed_tokens.weight": torch.randn(100, 128).bfloat16(),
               "lm_head.weight": torch.randn(100, 128).bfloat16(),
               "model.norm.weight": torch.ones(128).bfloat16()}
    (tmp_path / "m").mkdir()
    save_file(tensors, str(tmp_path / "m" / "model.safetensors"))
    with OpenCheckpoint(tmp_path / "m") as ck:
        plan = plan_checkpoint(ck)
    assert [j.weight for j in plan.jobs] == ["model.layers.0.mlp.up_proj.weight"] and plan.skipped == 2
    assert plan.kind == "float" and plan.block_size == (128, 128) and plan.model_type is None
    assert plan.jobs[0].scale is None and plan.jobs[0].nbytes == 256 * 128 * 2


def test_fp8_checkpoint_plan_reads_block_and_model_type_from_config(tmp_path):
    folder = write_fp8_checkpoint(tmp_path / "c", {"model.layers.0.mlp.proj": synthetic_weight((300, 520))},
                                  block=(64, 128), extra={"model.embed_tokens.weight": torch.randn(8, 4)})
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "qwen3_5",
                                                    "text_config": {"model_type": "qwen3_5_text"}}))
    with OpenCheckpoint(folder) as ck:
        plan = plan_checkpoint(ck)
        assert plan.block_size == (64, 128) and plan.kind == "fp8" and plan.skipped == 1
        assert plan.model_type == "qwen3_5_text" and plan.quant_method == "fp8"
        assert [(j.weight, j.scale) for j in plan.jobs] == [("model.layers.0.mlp.proj.weight",
                                                              "model.layers.0.mlp.proj.weight_scale_inv")]
        with pytest.raises(CheckpointError, match=r"config.json.*--block \[128, 128\] contradicts weight_block_size"):
            plan_checkpoint(ck, block=(128, 128))


def test_nothing_to_audit_is_named(tmp_path):
    save_file({"model.norm.weight": torch.ones(8)}, str(tmp_path / "x.safetensors"))
    with OpenCheckpoint(tmp_path / "x.safetensors") as ck, pytest.raises(CheckpointError, match="no FP8 weights"):
        plan_checkpoint(ck)
