"""load_fp8_checkpoint and ModelTensorSelector through the library API (the `blockfp8 quantize` round trips are in
tests/cli/test_quantize.py): which tensors the selector converts and why, experts kept unquantized on disk and
fused back on load, and the loader's errors naming the module, expert and file."""

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, Qwen3MoeConfig

from blockfp8.config import BlockFP8Config
from blockfp8.formats import CheckpointError, quantize_checkpoint
from blockfp8.nn import BlockFP8Experts, ModelTensorSelector, load_fp8_checkpoint, quantize_model

transformers.logging.set_verbosity_error()
MOE = Qwen3MoeConfig(vocab_size=300, hidden_size=192, intermediate_size=320, moe_intermediate_size=160,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, num_experts=4,
                     num_experts_per_tok=2, head_dim=48)
IDS = torch.randint(0, 300, (2, 11), generator=torch.Generator().manual_seed(0))
EXPERTS0 = "model.layers.0.mlp.experts"


@pytest.fixture(scope="module")
def moe_src(tmp_path_factory):
    path = tmp_path_factory.mktemp("moe") / "src"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(MOE, dtype=torch.bfloat16).save_pretrained(path)  # experts stored one by one
    return path


def test_selector_decides_from_the_model_structure(moe_src):
    selector = ModelTensorSelector(moe_src, ignore=("model.layers.1.self_attn",))
    bf16 = torch.bfloat16
    assert selector.decide("model.layers.0.self_attn.q_proj.weight", (192, 192), bf16) == (True, "linear weight")
    assert selector.decide(f"{EXPERTS0}.3.down_proj.weight", (192, 160), bf16) == (True, "expert weight")
    assert selector.decide(f"{EXPERTS0}.0.gate_proj.weight", (160, 192), bf16) == (True, "expert weight")
    # Mixtral spells the block `block_sparse_moe` and the parts w1/w3/w2; transformers builds it as `mlp`
    assert selector.decide("model.layers.1.block_sparse_moe.experts.2.w3.weight", (160, 192), bf16) == \
        (True, "expert weight")
    assert selector.decide("lm_head.weight", (300, 192), bf16) == \
        (False, "lm_head: the output projection stays in high precision (as in FP8 checkpoints)")
    not_linear = (False, "not the weight of a linear layer (embedding, norm, ...)")
    assert selector.decide("model.embed_tokens.weight", (300, 192), bf16) == not_linear
    assert selector.decide("model.layers.0.mlp.gate.weight", (4, 192), bf16) == not_linear  # the router
    assert selector.decide("model.layers.1.self_attn.k_proj.weight", (96, 192), bf16) == \
        (False, "ignored (matches 'model.layers.1.self_attn')")
    assert selector.skipped_modules() == ["lm_head"] + [f"model.layers.1.self_attn.{p}_proj" for p in "koqv"]


def test_selector_refuses_shapes_and_experts_config_json_does_not_describe(moe_src):
    selector = ModelTensorSelector(moe_src)
    name = "model.layers.0.self_attn.q_proj.weight"
    with pytest.raises(CheckpointError, match=r"shape \[192, 100\] but config.json describes \[192, 192\]") as e:
        selector.decide(name, (192, 100), torch.bfloat16)
    assert name in str(e.value) and str(moe_src) in str(e.value)
    with pytest.raises(CheckpointError, match="expert 4 but config.json describes 4 experts"):
        selector.decide(f"{EXPERTS0}.4.up_proj.weight", (160, 192), torch.bfloat16)


@torch.no_grad()
def test_experts_stored_unquantized_are_fused_on_load(moe_src, tmp_path):
    dst = tmp_path / "fp8"
    report = quantize_checkpoint(moe_src, dst, ModelTensorSelector(moe_src, ignore=(EXPERTS0,)), progress=False)
    assert f"{EXPERTS0}.0.gate_proj.weight" in report.kept
    loaded = load_fp8_checkpoint(dst)
    rep = loaded.blockfp8_report
    assert rep.converted_experts == ["model.layers.1.mlp.experts"]
    assert rep.skipped == {EXPERTS0: "stored unquantized in the checkpoint", "lm_head": "stored unquantized in the "
                                                                                         "checkpoint"}
    experts = loaded.get_submodule(EXPERTS0)
    assert not isinstance(experts, BlockFP8Experts) and experts.gate_up_proj.dtype == torch.bfloat16
    on_disk = load_file(dst / "model.safetensors")
    assert torch.equal(experts.gate_up_proj[2, 160:], on_disk[f"{EXPERTS0}.2.up_proj.weight"])
    assert torch.equal(experts.down_proj[3], on_disk[f"{EXPERTS0}.3.down_proj.weight"])
    in_memory = AutoModelForCausalLM.from_pretrained(moe_src, dtype=torch.bfloat16)
    quantize_model(in_memory, BlockFP8Config(ignored_layers=(EXPERTS0,)))
    assert torch.equal(loaded(IDS).logits, in_memory(IDS).logits)


def test_a_missing_expert_weight_names_the_module_and_expert(moe_src, tmp_path):
    dst = tmp_path / "fp8"
    quantize_checkpoint(moe_src, dst, ModelTensorSelector(moe_src), progress=False)
    tensors = load_file(dst / "model.safetensors")
    prefix = "model.layers.1.mlp.experts.3.down_proj"
    del tensors[f"{prefix}.weight"], tensors[f"{prefix}.weight_scale_inv"]
    save_file(tensors, dst / "model.safetensors")
    with pytest.raises(CheckpointError, match="experts module model.layers.1.mlp.experts: no FP8 weight for expert "
                                              r"3 down \(1 missing\)"):
        load_fp8_checkpoint(dst)
