"""Reading block-FP8 checkpoints: pairs, float32 scales from every on-disk format, and every bad-input error
naming the file and the tensor."""

import json

import pytest
import torch
from safetensors.torch import save_file

from blockfp8.formats import CheckpointError, FP8Checkpoint, iter_fp8_tensors
from blockfp8.quant import reference as ref

HF = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
CT = {"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups": {"group_0": {
    "targets": ["Linear"], "weights": {"num_bits": 8, "type": "float", "strategy": "block",
                                       "block_structure": [128, 128]}}}, "ignore": ["lm_head"]}


def _weights(scale_fmt="float32"):
    g = torch.Generator().manual_seed(1)
    out = {}
    for name, shape in (("model.layers.0.mlp.down_proj", (200, 300)), ("model.layers.0.self_attn.q_proj", (256, 128))):
        q, s = ref.quantize_weight(torch.randn(shape, generator=g), (128, 128), scale_fmt)
        out[name] = (q, s)
    return out


def _folder(tmp_path, tensors, qc=HF):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": qc}))
    save_file(tensors, tmp_path / "model.safetensors")
    return tmp_path


def _hf_tensors(weights, suffix="weight_scale_inv", scale_dtype=torch.float32):
    t = {"model.norm.weight": torch.ones(8, dtype=torch.bfloat16)}
    for name, (q, s) in weights.items():
        t[f"{name}.weight"] = q
        t[f"{name}.{suffix}"] = s.to(scale_dtype)
    return t


def test_hf_fp8_pairs_and_float32_scales(tmp_path):
    w = _weights()
    folder = _folder(tmp_path, _hf_tensors(w))
    got = {fw.name: fw for fw in iter_fp8_tensors(folder)}
    assert set(got) == set(w)
    for name, (q, s) in w.items():
        assert torch.equal(got[name].weight.view(torch.uint8), q.view(torch.uint8))
        assert torch.equal(got[name].scale, s) and got[name].scale.dtype == torch.float32
        assert got[name].block_size == (128, 128) and got[name].file.name == "model.safetensors"
    with FP8Checkpoint(folder) as ckpt:
        assert ckpt.plain == ["model.norm.weight"]


def test_ue8m0_e8m0_bytes(tmp_path):
    w = _weights("ue8m0")
    t = _hf_tensors(w)
    for name, (_, s) in w.items():
        t[f"{name}.weight_scale_inv"] = ref.ue8m0_exponent(s).view(torch.float8_e8m0fnu)
    folder = _folder(tmp_path, t, {**HF, "scale_fmt": "ue8m0"})
    for fw in iter_fp8_tensors(folder):
        assert torch.equal(fw.scale, w[fw.name][1])


def test_compressed_tensors_bf16_scales(tmp_path):
    w = _weights()
    folder = _folder(tmp_path, _hf_tensors(w, "weight_scale", torch.bfloat16), CT)
    for fw in iter_fp8_tensors(folder):
        assert torch.equal(fw.scale, w[fw.name][1].bfloat16().float())


def _expect(tmp_path, tensors, qc=HF, *, match, tensor, read=False):
    folder = _folder(tmp_path, tensors, qc)
    with pytest.raises(CheckpointError) as e:
        if read:
            list(iter_fp8_tensors(folder))
        else:
            FP8Checkpoint(folder)
    msg = str(e.value)
    assert "model.safetensors" in msg, msg
    assert f"tensor '{tensor}'" in msg, msg
    assert match in msg, msg


def test_weight_without_scale(tmp_path):
    t = _hf_tensors(_weights())
    del t["model.layers.0.mlp.down_proj.weight_scale_inv"]
    _expect(tmp_path, t, match="FP8 weight without its scale", tensor="model.layers.0.mlp.down_proj.weight")


def test_scale_without_weight(tmp_path):
    t = _hf_tensors(_weights())
    del t["model.layers.0.mlp.down_proj.weight"]
    _expect(tmp_path, t, match="scale without its weight", tensor="model.layers.0.mlp.down_proj.weight_scale_inv")


def test_scale_of_wrong_shape(tmp_path):
    t = _hf_tensors(_weights())
    t["model.layers.0.mlp.down_proj.weight_scale_inv"] = torch.ones(2, 2)
    _expect(tmp_path, t, match="scale shape [2, 2] does not match weight [200, 300] with block size [128, 128]: "
            "expected [2, 3]", tensor="model.layers.0.mlp.down_proj.weight_scale_inv")


def test_scale_of_wrong_dtype(tmp_path):
    t = _hf_tensors(_weights())
    t["model.layers.0.mlp.down_proj.weight_scale_inv"] = t["model.layers.0.mlp.down_proj.weight_scale_inv"].half()
    _expect(tmp_path, t, match="scale dtype F16 is not valid for a fp8 checkpoint", tensor=(
        "model.layers.0.mlp.down_proj.weight_scale_inv"))


def test_block_size_in_config_disagrees_with_scales(tmp_path):
    t = _hf_tensors(_weights())  # quantized with 128x128 blocks
    _expect(tmp_path, t, {**HF, "weight_block_size": [64, 64]},
            match="weight_block_size [64, 64] in", tensor="model.layers.0.mlp.down_proj.weight_scale_inv")


def test_wrong_scale_suffix_for_the_method(tmp_path):
    _expect(tmp_path, _hf_tensors(_weights(), "weight_scale"), match="stores scales as 'weight_scale_inv'",
            tensor="model.layers.0.mlp.down_proj.weight_scale")


def test_scale_next_to_a_float_weight(tmp_path):
    t = _hf_tensors(_weights())
    t["model.layers.0.mlp.down_proj.weight"] = torch.zeros(200, 300, dtype=torch.bfloat16)
    _expect(tmp_path, t, match="has a scale", tensor="model.layers.0.mlp.down_proj.weight")


def test_3d_fp8_weight(tmp_path):
    t = _hf_tensors(_weights())
    t["model.experts.weight"] = torch.zeros(2, 4, 4, dtype=torch.float8_e4m3fn)
    t["model.experts.weight_scale_inv"] = torch.ones(2, 1, 1)
    _expect(tmp_path, t, match="only 2-D [N, K] weights", tensor="model.experts.weight")


def test_nan_in_weight(tmp_path):
    w = _weights()
    q = w["model.layers.0.mlp.down_proj"][0].clone()
    q.view(torch.uint8)[5, 7] = 0x7F  # E4M3FN NaN
    w["model.layers.0.mlp.down_proj"] = (q, w["model.layers.0.mlp.down_proj"][1])
    _expect(tmp_path, _hf_tensors(w), match="NaN in the FP8 weight at [5, 7]",
            tensor="model.layers.0.mlp.down_proj.weight", read=True)


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), 0.0, -1.0])
def test_bad_scale_values(tmp_path, bad):
    t = _hf_tensors(_weights())
    t["model.layers.0.self_attn.q_proj.weight_scale_inv"][1, 0] = bad
    _expect(tmp_path, t, match="scale at block [1, 0]", tensor="model.layers.0.self_attn.q_proj.weight_scale_inv",
            read=True)


def test_ue8m0_config_with_float32_scales(tmp_path):
    _expect(tmp_path, _hf_tensors(_weights("float32")), {**HF, "scale_fmt": "ue8m0"}, match="is not a power of two",
            tensor="model.layers.0.mlp.down_proj.weight_scale_inv", read=True)


def test_no_quantization_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    save_file({"x": torch.zeros(1)}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="no quantization_config"):
        FP8Checkpoint(tmp_path)
