"""`blockfp8 quantize --plan report.json`: the plan's UE8M0 layers get power-of-two scales, the rest float32
scales; our loader and transformers' own FP8 loader read the checkpoint; each layer's decision sees its format."""

import json

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig

from blockfp8.audit.report import build_report, write_report_folder
from blockfp8.audit.verdict import Thresholds
from blockfp8.cli.main import main
from blockfp8.formats import iter_fp8_tensors, read_quant_config
from blockfp8.nn import BlockFP8Linear, load_fp8_checkpoint
from blockfp8.quant import reference as ref

transformers.logging.set_verbosity_error()
CFG = LlamaConfig(vocab_size=300, hidden_size=256, intermediate_size=384, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)  # block-aligned: transformers' CPU dequantizer
KEEP = ["model.layers.0.mlp.down_proj", "model.layers.1.self_attn.k_proj"]


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    path = tmp_path_factory.mktemp("plan") / "src"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CFG, dtype=torch.bfloat16)
    model.save_pretrained(path)
    return path, [(n, list(m.weight.shape)) for n, m in model.named_modules()
                  if isinstance(m, torch.nn.Linear) and n != "lm_head"]


def _report(tmp_path, layers) -> str:
    rows = [{"name": n, "shape": s, "tokens": 8, "bits_fp32": 5.0, "bits_ue8m0": 4.9, "bits_lost": 0.1}
            for n, s in layers]
    ci = {"value": 1.0, "ci": [0.5, 1.5]}
    plan = {"float32_layers": KEEP, "ue8m0_layers": len(rows) - len(KEEP), "layers": len(rows),
            "ue8m0_flop_share": 0.9, "tolerance": {"kl_share": 0.2}, "within_tolerance": True,
            "e2e": {"kl_increase_pct": ci, "ppl_increase_pct": ci, "kl_share_of_ue8m0": 0.1,
                    "all_ue8m0": {"kl_increase_pct": ci, "ppl_increase_pct": ci}}}
    report = build_report(model="tiny", model_type="llama", level="calibrated", block_size=(128, 128), rows=rows,
                          thresholds=Thresholds(), plan=plan)
    write_report_folder(report, tmp_path / "report")
    return str(tmp_path / "report" / "report.json")


@torch.no_grad()
def test_plan_checkpoint_has_per_layer_scale_formats(src, tmp_path, capsys):
    folder, layers = src
    dst = tmp_path / "fp8"
    assert main(["quantize", str(folder), str(dst), "--plan", _report(tmp_path, layers), "--no-progress"]) == 0
    assert f"{len(layers) - len(KEEP)} weights with power-of-two (UE8M0) scales" in capsys.readouterr().out
    assert read_quant_config(dst).scale_fmt == "float32"  # not every layer is UE8M0: no scale_fmt: ue8m0
    pow2 = {fw.name: bool(ref.is_power_of_two(fw.scale).all()) for fw in iter_fp8_tensors(dst)}
    assert len(pow2) == len(layers)
    assert all(pow2[n] for n, _ in layers if n not in KEEP) and not any(pow2[n] for n in KEEP)
    src_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    for fw in iter_fp8_tensors(dst):  # each weight is exactly its format's quantization of the source
        fmt = "float32" if fw.name in KEEP else "ue8m0"
        q, s = ref.quantize_weight(src_model.get_submodule(fw.name).weight, (128, 128), fmt)
        assert torch.equal(fw.scale, s) and torch.equal(fw.weight.view(torch.uint8), q.view(torch.uint8)), fw.name
    loaded = load_fp8_checkpoint(dst)
    fmts = {n: str(m.decision.weight_scale_fmt) for n, m in loaded.named_modules() if isinstance(m, BlockFP8Linear)}
    assert {n for n, f in fmts.items() if f == "float32"} == set(KEEP)
    # transformers' own FP8 loader dequantizes every weight exactly as ours does
    sd = AutoModelForCausalLM.from_pretrained(dst, dtype=torch.bfloat16).state_dict()
    for fw in iter_fp8_tensors(dst):
        want = ref.dequantize_weight(fw.weight, fw.scale, fw.block_size, torch.bfloat16)
        assert torch.equal(sd[f"{fw.name}.weight"], want), fw.name


def test_plan_errors(src, tmp_path, capsys):
    folder, layers = src
    report = _report(tmp_path, layers)
    assert main(["quantize", str(folder), str(tmp_path / "a"), "--plan", report, "--scale-fmt", "ue8m0"]) == 2
    assert "--plan chooses the scale format per layer" in capsys.readouterr().err
    other = _report(tmp_path / "other", [("model.other.proj", [256, 256])] + [(n, [256, 256]) for n in KEEP])
    assert main(["quantize", str(folder), str(tmp_path / "b"), "--plan", other, "--no-progress"]) == 1
    assert "name no weight this checkpoint quantizes" in capsys.readouterr().err and not (tmp_path / "b").exists()
    data = json.loads(open(report).read())
    del data["plan"]
    (tmp_path / "noplan.json").write_text(json.dumps(data))
    assert main(["quantize", str(folder), str(tmp_path / "c"), "--plan", str(tmp_path / "noplan.json")]) == 1
    err = capsys.readouterr().err
    assert "noplan.json" in err and "field plan is missing" in err and len(err.strip().splitlines()) == 1
