"""The synthetic checkpoints and GEMM anchors of blockfp8.testing.synthetic, and its command line."""

import json

import pytest
import torch

from blockfp8.formats import FP8Checkpoint
from blockfp8.quant import reference as ref
from blockfp8.testing.synthetic import KINDS, gemm_anchor, main, synthetic_weight, write_fp8_checkpoint


def test_gemm_anchor_reproduces_the_reference_measurement():
    a = gemm_anchor(m=512, k=1024, n=512)
    # measured with our kernels on an H100 (2048x7168 activations): 5.08 vs 4.74 bits with an outlier column,
    # almost nothing without
    assert a["outlier_column_x30"]["bits_lost"] > 0.25 > 0.1 > a["gaussian"]["bits_lost"]
    assert a["outlier_column_x30"]["bits_fp32"] == pytest.approx(5.08, abs=0.15)


def test_kinds_shape_the_block_maxima():
    s32 = {kind: ref.quantize_weight(synthetic_weight((256, 384), kind))[1] for kind in KINDS}
    assert bool(ref.is_power_of_two(s32["pow2"]).all())
    assert not bool(ref.is_power_of_two(s32["gaussian"]).any())
    assert torch.equal(synthetic_weight((256, 384), "outlier", seed=3), synthetic_weight((256, 384), "outlier", seed=3))
    with pytest.raises(ValueError, match="valid values"):
        synthetic_weight((8, 8), "spiky")


def test_written_checkpoint_is_a_valid_fp8_folder(tmp_path):
    folder = write_fp8_checkpoint(tmp_path / "c", {"model.layers.0.mlp.proj": synthetic_weight((130, 260))},
                                  model_type="qwen3")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "qwen3" and config["quantization_config"]["quant_method"] == "fp8"
    with FP8Checkpoint(folder) as c:
        assert c.block_size == (128, 128) and list(c.fp8) == ["model.layers.0.mlp.proj"]


def test_command_line_writes_the_folder_the_docs_describe(tmp_path, capsys):
    assert main([str(tmp_path / "ck"), "--shapes", "256x128,128x384", "--kind", "outlier"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "ck")
    with FP8Checkpoint(tmp_path / "ck") as c:
        assert sorted(c.fp8) == ["model.layers.0.mlp.proj", "model.layers.1.mlp.proj"]
