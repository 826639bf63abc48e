"""quantize_model (blockfp8.nn.convert) on transformers causal LMs (Llama, Qwen2, Qwen3, Qwen3-MoE): what is
converted, what is skipped and why, the weights' bits, memory, and the model's output."""

import gc
import weakref

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config, Qwen3MoeConfig

from blockfp8.config import BlockFP8Config
from blockfp8.nn import BlockFP8Experts, BlockFP8Linear, quantize_model
from blockfp8.quant import metrics
from blockfp8.quant import reference as ref
from blockfp8.testing import tolerances as tol

transformers.logging.set_verbosity_error()
COMMON = dict(vocab_size=300, hidden_size=192, intermediate_size=320, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2)
CONFIGS = {
    "llama": lambda: LlamaConfig(**COMMON),
    "qwen2": lambda: Qwen2Config(**COMMON),  # q/k/v with bias
    "qwen3": lambda: Qwen3Config(**COMMON, head_dim=48),
    "qwen3_moe": lambda: Qwen3MoeConfig(**COMMON, moe_intermediate_size=160, num_experts=4, num_experts_per_tok=2,
                                        head_dim=48),
}


def _model(kind, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(CONFIGS[kind](), dtype=dtype).eval()


@pytest.mark.parametrize("kind", list(CONFIGS))
@torch.no_grad()
def test_converts_every_linear_but_lm_head(kind):
    model = _model(kind)
    originals = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    experts = {n: (m.gate_up_proj.detach().clone(), m.down_proj.detach().clone())
               for n, m in model.named_modules() if hasattr(m, "gate_up_proj")}
    ids = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(1))
    want = model(ids).logits
    report = quantize_model(model)
    assert report.skipped == {"lm_head": "lm_head: the output projection stays in high precision (as in FP8 "
                                         "checkpoints)"}
    assert set(report.converted) == set(originals) - {"lm_head"}
    assert set(report.converted_experts) == set(experts)
    for name in report.converted:
        layer = model.get_submodule(name)
        assert isinstance(layer, BlockFP8Linear) and layer.decision is not None
        q, s = ref.quantize_weight(originals[name], (128, 128), "float32")
        assert torch.equal(layer.weight.view(torch.uint8), q.view(torch.uint8))
        assert torch.equal(layer.weight_scale_inv, s)
    for name, (gu, down) in experts.items():
        layer = model.get_submodule(name)
        assert isinstance(layer, BlockFP8Experts) and set(layer.decisions) == {"w13", "w2"}
        i = down.shape[2]
        q, s = ref.quantize_weight(gu[1, i:], (128, 128))  # expert 1's up projection, blocked on its own
        w, sc = layer._slices("up")
        assert torch.equal(w[1].view(torch.uint8), q.view(torch.uint8)) and torch.equal(sc[1], s)
    assert isinstance(model.lm_head, torch.nn.Linear) and not isinstance(model.lm_head, BlockFP8Linear)
    got = model(ids).logits
    # each decoder layer contributes at most about one gated-MLP's worth of FP8 error to first order
    bound = tol.FP8_MLP_CALC_DIFF * model.config.num_hidden_layers
    assert metrics.calc_diff(got, want) < bound, kind
    assert sum(report.backends.values()) == len(report.converted) + 2 * len(report.converted_experts)


@torch.no_grad()
def test_ignored_layers_and_router_gates():
    model = _model("qwen3_moe")
    cfg = BlockFP8Config(ignored_layers=("model.layers.0", "*.o_proj"))
    report = quantize_model(model, cfg)
    assert report.skipped["model.layers.0.self_attn.q_proj"] == "ignored (matches 'model.layers.0')"
    assert report.skipped["model.layers.0.mlp.experts"] == "ignored (matches 'model.layers.0')"
    assert report.skipped["model.layers.1.self_attn.o_proj"] == "ignored (matches '*.o_proj')"
    assert report.converted == ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj",
                                "model.layers.1.self_attn.v_proj"]
    assert report.converted_experts == ["model.layers.1.mlp.experts"]
    assert "skipped" in report.summary() and "ignored" in report.summary()


def test_linear_router_gate_is_skipped():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gate = torch.nn.Linear(128, 4, bias=False)
            self.experts = torch.nn.ModuleList([torch.nn.Linear(128, 128) for _ in range(4)])
            self.shared_expert_gate = torch.nn.Linear(128, 1, bias=False)

    block = Block()
    report = quantize_model(block)
    assert report.skipped == {"gate": "MoE router gate: engines keep it unquantized",
                              "shared_expert_gate": "MoE router gate: engines keep it unquantized"}
    assert report.converted == [f"experts.{i}" for i in range(4)]


@torch.no_grad()
def test_memory_one_byte_per_parameter_and_originals_freed():
    model = _model("llama", torch.bfloat16)
    params = {n: m.weight for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    refs = [weakref.ref(p) for p in params.values()]
    expected = sum(p.numel() + 4 * ref.cdiv(p.shape[0], 128) * ref.cdiv(p.shape[1], 128) for p in params.values())
    before = sum(2 * p.numel() for p in params.values())
    del params
    report = quantize_model(model)
    gc.collect()
    assert all(r() is None for r in refs), "a bf16 original weight is still alive"
    assert report.bytes_before == before and report.bytes_after == expected
    assert report.bytes_after < 0.51 * report.bytes_before + 4 * 1024  # ~1 byte/param + small scales


@torch.no_grad()
def test_ue8m0_weights_and_requant_path():
    model = _model("llama")
    quantize_model(model, BlockFP8Config(scale_fmt="ue8m0"))
    layer = model.model.layers[0].mlp.down_proj
    assert bool(ref.is_power_of_two(layer.weight_scale_inv).all()) and not layer.decision.requant_weight_ue8m0
    model = _model("llama")
    report = quantize_model(model, BlockFP8Config(scale_fmt="ue8m0"), weight_scale_fmt="float32")
    layer = model.model.layers[0].mlp.down_proj
    assert layer.decision.requant_weight_ue8m0 and not bool(ref.is_power_of_two(layer.weight_scale_inv).all())
    assert report.backends == {"linear: reference/ue8m0 (requant ue8m0)": 14}


def test_already_converted_and_meta_modules():
    model = _model("llama")
    quantize_model(model)
    again = quantize_model(model)
    assert again.converted == [] and list(again.skipped) == ["lm_head"]
    with torch.device("meta"):
        meta = torch.nn.Sequential(torch.nn.Linear(128, 128))
    assert quantize_model(meta).skipped == {"0": "weights are on the meta device (not materialized)"}
    with pytest.raises(ValueError, match="weight_scale_fmt='e4m3'"):
        quantize_model(model, weight_scale_fmt="e4m3")


@pytest.mark.parametrize("scale_fmt", ["float32", "ue8m0"])
@torch.no_grad()
def test_save_pretrained_after_quantize_model_round_trips(tmp_path, scale_fmt):
    """save_pretrained writes the fp8 quantization_config: our loader gives the same logits bit for bit and plain
    transformers (which dequantizes on a CPU) reads the same weights back, not FP8 bytes taken for floats."""
    import json

    from blockfp8.formats import read_quant_config
    from blockfp8.nn import load_fp8_checkpoint

    cfg = LlamaConfig(**{**COMMON, "hidden_size": 256, "intermediate_size": 512})  # whole 128-blocks
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
    ids = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(1))
    quantize_model(model, BlockFP8Config(scale_fmt=scale_fmt) if scale_fmt == "ue8m0" else None)
    want = model(ids).logits
    model.save_pretrained(tmp_path)
    qc = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "fp8" and qc["weight_block_size"] == [128, 128]
    assert qc["modules_to_not_convert"] == ["lm_head"] and ("scale_fmt" in qc) == (scale_fmt == "ue8m0")
    assert read_quant_config(tmp_path).scale_fmt == scale_fmt
    assert torch.equal(load_fp8_checkpoint(tmp_path)(ids).logits, want)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    ours = model.model.layers[1].mlp.down_proj
    theirs = plain.model.layers[1].mlp.down_proj
    assert type(theirs) is torch.nn.Linear  # transformers dequantizes on a CPU: the same weight, bit for bit
    assert torch.equal(theirs.weight, ref.dequantize_weight(ours.weight, ours.weight_scale_inv, (128, 128),
                                                            torch.bfloat16))


def test_save_pretrained_refuses_fused_fp8_experts(tmp_path):
    model = _model("qwen3_moe")
    quantize_model(model)
    with pytest.raises(ValueError, match="fused FP8 experts.*blockfp8 quantize SRC DST"):
        model.save_pretrained(tmp_path)
    assert not any(tmp_path.iterdir())
