"""`blockfp8 quantize` and `load_fp8_checkpoint`: round trip bit for bit, SRC untouched, no partial DST on
bad input, skip lists, interop with transformers' own FP8 loader."""

import hashlib
import json
import shutil

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3MoeConfig

from blockfp8.cli.main import main
from blockfp8.config import BlockFP8Config
from blockfp8.formats import CheckpointError, iter_fp8_tensors, read_quant_config
from blockfp8.nn import BlockFP8Experts, BlockFP8Linear, load_fp8_checkpoint, quantize_model
from blockfp8.quant import reference as ref

transformers.logging.set_verbosity_error()
IDS = torch.randint(0, 300, (2, 11), generator=torch.Generator().manual_seed(0))


def _save(path, cfg, shard=None, seed=0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(path, max_shard_size=shard) if shard else model.save_pretrained(path)
    (path / "tokenizer.json").write_text('{"fake": "tokenizer"}')
    (path / "training_args.bin").write_bytes(b"\x80\x04pickle")
    return path


LLAMA = LlamaConfig(vocab_size=300, hidden_size=192, intermediate_size=320, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
MOE = Qwen3MoeConfig(vocab_size=300, hidden_size=192, intermediate_size=320, moe_intermediate_size=160,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, num_experts=4,
                     num_experts_per_tok=2, head_dim=48)


@pytest.fixture(scope="module")
def llama_src(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("llama") / "src", LLAMA, shard="200KB")  # sharded + index


@pytest.fixture(scope="module")
def moe_src(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("moe") / "src", MOE)  # single file


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _leftovers(parent, name):
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


@torch.no_grad()
@pytest.mark.parametrize("which,scale_fmt", [("llama", "float32"), ("llama", "ue8m0"), ("moe", "float32")])
def test_round_trip_bit_for_bit(request, tmp_path, which, scale_fmt):
    src = request.getfixturevalue(f"{which}_src")
    before = _digest(src)
    dst = tmp_path / "fp8"
    assert main(["quantize", str(src), str(dst), "--scale-fmt", scale_fmt, "--no-progress"]) == 0
    assert _digest(src) == before, "SRC was modified"
    assert (dst / "tokenizer.json").read_text() == '{"fake": "tokenizer"}'
    assert not (dst / "training_args.bin").exists()
    qc = read_quant_config(dst)
    assert qc.quant_method == "fp8" and qc.scale_fmt == scale_fmt and qc.ignored == ("lm_head",)
    loaded = load_fp8_checkpoint(dst)
    in_memory = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    quantize_model(in_memory, BlockFP8Config(scale_fmt=scale_fmt) if scale_fmt == "ue8m0" else None)
    assert torch.equal(loaded(IDS).logits, in_memory(IDS).logits)
    kinds = {type(m) for m in loaded.modules()}
    assert BlockFP8Linear in kinds and (BlockFP8Experts in kinds) == (which == "moe")
    rep = loaded.blockfp8_report
    assert rep.skipped == {"lm_head": "stored unquantized in the checkpoint"}
    if scale_fmt == "ue8m0":
        assert all(bool(ref.is_power_of_two(fw.scale).all()) for fw in iter_fp8_tensors(dst))
        assert set(rep.backends) == {"linear: reference/ue8m0"}


def test_sharding_and_index_are_kept(llama_src, tmp_path):
    dst = tmp_path / "fp8"
    assert main(["quantize", str(llama_src), str(dst), "--no-progress"]) == 0
    src_index = json.loads((llama_src / "model.safetensors.index.json").read_text())
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(src_index["weight_map"].values())
    name = "model.layers.1.mlp.down_proj"
    assert index["weight_map"][f"{name}.weight_scale_inv"] == index["weight_map"][f"{name}.weight"]
    shard = load_file(dst / index["weight_map"][f"{name}.weight"])
    assert shard[f"{name}.weight"].dtype == torch.float8_e4m3fn and shard[f"{name}.weight_scale_inv"].shape == (2, 3)
    assert index["metadata"]["total_size"] == sum((dst / f).stat().st_size for f in set(index["weight_map"].values()))


def test_ignore_writes_both_skip_lists(llama_src, tmp_path):
    dst = tmp_path / "fp8"
    assert main(["quantize", str(llama_src), str(dst), "--ignore", "*.o_proj", "--ignore", "model.layers.1.mlp",
                 "--no-progress"]) == 0
    qc = json.loads((dst / "config.json").read_text())["quantization_config"]
    want = ["lm_head", "model.layers.0.self_attn.o_proj", "model.layers.1.mlp.down_proj",
            "model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj", "model.layers.1.self_attn.o_proj"]
    assert qc["modules_to_not_convert"] == qc["ignored_layers"] == want
    model = load_fp8_checkpoint(dst)
    assert type(model.model.layers[1].mlp.up_proj) is torch.nn.Linear
    assert model.model.layers[1].mlp.up_proj.weight.dtype == torch.bfloat16
    assert isinstance(model.model.layers[1].self_attn.q_proj, BlockFP8Linear)


def test_refuses_existing_dst_unless_overwrite(llama_src, tmp_path, capsys):
    dst = tmp_path / "fp8"
    dst.mkdir()
    (dst / "keep.txt").write_text("x")
    assert main(["quantize", str(llama_src), str(dst), "--no-progress"]) == 2  # usage: say --overwrite
    err = capsys.readouterr().err
    assert "already exists; pass --overwrite to replace it" in err and "overwrite=True" not in err
    assert (dst / "keep.txt").exists()
    assert main(["quantize", str(llama_src), str(dst), "--overwrite", "--no-progress"]) == 0
    assert not (dst / "keep.txt").exists() and (dst / "config.json").exists()
    assert _leftovers(tmp_path, "fp8") == []


def _broken_copy(src, tmp_path, how):
    bad = tmp_path / "bad_src"
    shutil.copytree(src, bad)
    index = json.loads((bad / "model.safetensors.index.json").read_text())
    name = "model.layers.0.mlp.up_proj.weight"
    shard = bad / index["weight_map"][name]
    if how == "nan":
        t = load_file(shard)
        t[name][3, 5] = float("nan")
        save_file(t, shard, metadata={"format": "pt"})
    elif how == "truncated":
        shard.write_bytes(shard.read_bytes()[:-10])
    elif how == "missing_shard":
        shard.unlink()
    elif how == "pickle_only":
        for p in bad.glob("*.safetensors*"):
            p.unlink()
        (bad / "pytorch_model.bin").write_bytes(b"\x80\x04")
    elif how == "already_quantized":
        cfg = json.loads((bad / "config.json").read_text())
        cfg["quantization_config"] = {"quant_method": "fp8", "weight_block_size": [128, 128]}
        (bad / "config.json").write_text(json.dumps(cfg))
    return bad, shard.name, name


@pytest.mark.parametrize("how,expect", [
    ("nan", "NaN or Inf at index [3, 5]"),
    ("truncated", "truncated"),
    ("missing_shard", "named in the index is missing"),
    ("pickle_only", "pickle-based checkpoints are refused"),
    ("already_quantized", "has a quantization_config already"),
])
def test_bad_source_leaves_nothing(llama_src, tmp_path, capsys, how, expect):
    bad, shard, tensor = _broken_copy(llama_src, tmp_path, how)
    dst = tmp_path / "out"
    assert main(["quantize", str(bad), str(dst), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert expect in err, err
    if how in ("nan", "truncated", "missing_shard"):
        assert shard in err
    if how in ("nan", "missing_shard"):
        assert tensor in err
    assert not dst.exists() and _leftovers(tmp_path, "out") == []


def test_dst_inside_src_and_usage(llama_src, tmp_path, capsys):
    assert main(["quantize", str(llama_src), str(llama_src / "inner"), "--no-progress"]) == 1
    assert "must lie outside SRC" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["quantize", str(llama_src), str(tmp_path / "x"), "--block", "128,0"])
    assert e.value.code == 2


def test_transformers_reads_our_checkpoint(tmp_path):
    """Block-aligned shapes (transformers' CPU dequantizer derives the block from the scale grid and does not
    handle ragged shapes): its dequantized weights are exactly ours."""
    cfg = LlamaConfig(vocab_size=300, hidden_size=256, intermediate_size=384, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2)
    src = _save(tmp_path / "src", cfg)
    assert main(["quantize", str(src), str(tmp_path / "dst"), "--no-progress"]) == 0
    sd = AutoModelForCausalLM.from_pretrained(tmp_path / "dst", dtype=torch.bfloat16).state_dict()
    n = 0
    for fw in iter_fp8_tensors(tmp_path / "dst"):
        assert torch.equal(sd[f"{fw.name}.weight"], ref.dequantize_weight(fw.weight, fw.scale, fw.block_size,
                                                                        torch.bfloat16)), fw.name
        n += 1
    assert n == 7


@torch.no_grad()
def test_loads_compressed_tensors(moe_src, tmp_path):
    dst = tmp_path / "fp8"
    assert main(["quantize", str(moe_src), str(dst), "--no-progress"]) == 0
    ct = tmp_path / "ct"
    ct.mkdir()
    tensors = load_file(dst / "model.safetensors")
    out = {(k.replace("weight_scale_inv", "weight_scale")): (v.bfloat16() if k.endswith("_scale_inv") else v)
           for k, v in tensors.items()}
    save_file(out, ct / "model.safetensors")
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "compressed-tensors", "format": "float-quantized", "ignore": [
        "lm_head"], "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
            "num_bits": 8, "type": "float", "strategy": "block", "block_structure": [128, 128]}}}}
    (ct / "config.json").write_text(json.dumps(cfg))
    model = load_fp8_checkpoint(ct)
    layer = model.model.layers[0].self_attn.q_proj
    assert torch.equal(layer.weight_scale_inv, tensors["model.layers.0.self_attn.q_proj.weight_scale_inv"]
                       .bfloat16().float())
    assert len(model.blockfp8_report.converted_experts) == 2
    assert torch.isfinite(model(IDS).logits).all()


def test_load_errors_name_file_and_tensor(llama_src, tmp_path):
    dst = tmp_path / "fp8"
    assert main(["quantize", str(llama_src), str(dst), "--no-progress"]) == 0
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    name = "model.layers.0.self_attn.k_proj.weight"
    shard = dst / index["weight_map"][name]
    t = load_file(shard)
    t["model.layers.0.self_attn.k_proj.weight_scale_inv"] = torch.ones(1, 1)
    save_file(t, shard)
    with pytest.raises(CheckpointError) as e:
        load_fp8_checkpoint(dst)
    msg = str(e.value)
    assert shard.name in msg and "k_proj.weight_scale_inv" in msg and "expected [1, 2]" in msg


def test_load_refuses_unknown_and_missing_tensors(llama_src, tmp_path):
    dst = tmp_path / "fp8"
    assert main(["quantize", str(llama_src), str(dst), "--no-progress"]) == 0
    index_path = dst / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    name = "model.norm.weight"
    shard = dst / index["weight_map"][name]
    t = load_file(shard)
    t["model.extra.weight"] = torch.zeros(3)
    save_file(t, shard)
    index["weight_map"]["model.extra.weight"] = shard.name
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="tensor 'model.extra.weight': tensor has no place in the model"):
        load_fp8_checkpoint(dst)
    del t["model.extra.weight"], t[name]
    save_file(t, shard)
    del index["weight_map"]["model.extra.weight"], index["weight_map"][name]
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="not in the checkpoint, e.g. model.norm.weight"):
        load_fp8_checkpoint(dst)


def test_missing_src_is_a_usage_error_naming_it(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    assert main(["quantize", str(missing), str(tmp_path / "dst")]) == 2
    err = capsys.readouterr().err
    assert f"SRC {missing}: not a model folder" in err
    assert not (tmp_path / "dst").exists()
