"""Hostile or unlucky input through the CLI: nothing lost, nothing leaked, no traceback. Each case gives one line on
stderr naming the file, field or path, with the documented exit code (1 bad input file or failed write, 2 usage or
configuration), leaves no partial folder, and takes bounded time."""

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig

from blockfp8.cli.main import main
from blockfp8.formats import writer

transformers.logging.set_verbosity_error()
SRC_ROOT = Path(__file__).resolve().parents[2] / "src"
LLAMA = LlamaConfig(vocab_size=300, hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hardening") / "src"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(LLAMA, dtype=torch.bfloat16).save_pretrained(path)
    (path / "tokenizer.json").write_text('{"fake": "tokenizer"}')
    return path


@pytest.fixture
def src(model_dir, tmp_path):
    return Path(shutil.copytree(model_dir, tmp_path / "src"))


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _leftovers(parent):
    return [p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def _fails(capsys, argv, code, *expected):
    """Run the CLI; it must exit ``code`` with one line on stderr holding every ``expected`` text."""
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == code, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


def _quantize(src, dst, *extra):
    return ["quantize", str(src), str(dst), "--no-progress", *extra]


# ------------------------------------------------------------------------------------------------ nothing lost


def test_dst_through_a_symlinked_parent_is_src(src, tmp_path, capsys):
    (tmp_path / "via").symlink_to(src)
    before = _digest(src)
    _fails(capsys, _quantize(src, tmp_path / "via" / "out", "--overwrite"), 1, "must lie outside SRC",
           "after resolving links")
    (tmp_path / "src-link").symlink_to(src)
    _fails(capsys, _quantize(src, tmp_path / "src-link", "--overwrite"), 1, "must lie outside SRC")
    _fails(capsys, _quantize(tmp_path / "src-link", src, "--overwrite"), 1, "must lie outside SRC")
    assert _digest(src) == before and _leftovers(tmp_path) == [] and _leftovers(src) == []


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_dst_that_appears_during_the_run(src, tmp_path, capsys, monkeypatch, overwrite):
    dst = tmp_path / "out"
    write_folder = writer._write_folder

    def and_meanwhile(*args, **kwargs):
        write_folder(*args, **kwargs)
        dst.mkdir()  # another user's folder, or a second quantize to the same DST, finishing first
        (dst / "theirs.txt").write_text("keep me")

    monkeypatch.setattr(writer, "_write_folder", and_meanwhile)
    if overwrite:
        assert main(_quantize(src, dst, "--overwrite")) == 0
        assert not (dst / "theirs.txt").exists() and (dst / "config.json").exists()
    else:
        _fails(capsys, _quantize(src, dst), 1, str(dst), "appeared while this run was writing")
        assert sorted(p.name for p in dst.iterdir()) == ["theirs.txt"]
    assert _leftovers(tmp_path) == []


def test_links_out_of_src_are_never_followed(src, tmp_path, capsys):
    (tmp_path / "secret.txt").write_text("password")
    (src / "notes.txt").symlink_to(tmp_path / "secret.txt")
    (src / "vocab.txt").write_text("a b c")
    (src / "vocab-link.txt").symlink_to("vocab.txt")  # inside SRC: copied
    os.mkfifo(src / "pipe.json")
    assert main(_quantize(src, tmp_path / "out")) == 0
    out = capsys.readouterr().out
    assert "not copied: notes.txt (symbolic link out of SRC, not followed)" in out
    assert "not copied: pipe.json (not a regular file)" in out
    assert not (tmp_path / "out" / "notes.txt").exists()
    assert (tmp_path / "out" / "vocab-link.txt").read_text() == "a b c"
    (src / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    (src / "model.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    for argv in (_quantize(src, tmp_path / "out2"), ["audit", str(src), "--no-progress"]):
        _fails(capsys, argv, 1, "model.safetensors", "symbolic link out of the folder")


# ------------------------------------------------------------------------------------------------ no pickle


def test_pickle_is_refused_on_every_checkpoint_path(src, tmp_path, capsys):
    from blockfp8.formats import CheckpointError
    from blockfp8.nn import load_fp8_checkpoint

    (src / "model.safetensors").unlink()
    (src / "pytorch_model.bin").write_bytes(b"\x80\x04N.")  # a pickle (of None): never opened
    for argv in (_quantize(src, tmp_path / "out"), ["audit", str(src)], ["audit", str(src / "pytorch_model.bin")]):
        _fails(capsys, argv, 1, "pytorch_model.bin", "pickle-based checkpoints are refused")
    _config(src, quantization_config={"quant_method": "fp8", "weight_block_size": [128, 128]})
    with pytest.raises(CheckpointError, match="pickle-based checkpoints are refused"):
        load_fp8_checkpoint(src)
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "pytorch_model.bin"}}))
    _fails(capsys, ["audit", str(src)], 1, "pytorch_model.bin", "pickle-based checkpoints are refused")


# ------------------------------------------------------------------------------------------------ bounded


def _config(src, **changes):
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(changes)
    (src / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("field,value,expected", [
    ("num_hidden_layers", 10_000_000, "field num_hidden_layers=10000000 is beyond any real model"),
    ("hidden_size", "abc", "field hidden_size='abc' must be a positive integer"),
    ("vocab_size", 0, "field vocab_size=0 must be a positive integer"),
    ("text_config", {"num_experts": 10**9}, "field text_config.num_experts=1000000000 is beyond any real model"),
])
def test_config_sizes_are_checked_before_a_model_is_built(src, tmp_path, capsys, field, value, expected):
    _config(src, **{field: value})
    start = time.monotonic()
    _fails(capsys, _quantize(src, tmp_path / "out"), 1, "config.json", expected)
    assert time.monotonic() - start < 10 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("text,expected", [
    ('{"model_type": "llama", "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ('{"model_type": "llama", "x": ' + "[" * 40 + "]" * 40 + "}", "nested more than 32 levels"),
    ('{"hidden_size": ' + "9" * 5000 + "}", "not valid JSON"),
    ('{"model_type": "llama",', "not valid JSON"),
])
def test_malformed_config_json(src, tmp_path, capsys, text, expected):
    (src / "config.json").write_text(text)
    for argv in (_quantize(src, tmp_path / "out"), ["audit", str(src)]):
        err = _fails(capsys, argv, 1, "config.json", expected)
        assert len(err) < 600


def test_compressed_tensors_fields_given_as_strings(src, capsys):
    group = {"format": "float-quantized", "weights": "block", "input_activations": "dynamic"}
    _config(src, quantization_config={"quant_method": "compressed-tensors", "config_groups": {"g": group}})
    _fails(capsys, ["audit", str(src)], 1, "config.json", "config_groups.g.weights='block' must be an object")
    group["weights"] = {"num_bits": 8, "type": "float", "strategy": "block", "block_structure": [128, 128]}
    _config(src, quantization_config={"quant_method": "compressed-tensors", "config_groups": {"g": group}})
    _fails(capsys, ["audit", str(src)], 1, "config_groups.g.input_activations='dynamic' must be an object")


def test_a_fifo_named_like_a_checkpoint(tmp_path, capsys):
    os.mkfifo(tmp_path / "model.safetensors")

    def hung(signum, frame):
        raise TimeoutError("audit blocked on the FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)  # a blocking open() is interrupted by the handler's exception
    try:
        _fails(capsys, ["audit", str(tmp_path)], 1, "model.safetensors: a FIFO, not a regular file")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_zero_size_weights(tmp_path, capsys):
    fp8 = tmp_path / "fp8"
    fp8.mkdir()
    save_file({"a.weight": torch.zeros(0, 128, dtype=torch.float8_e4m3fn), "a.weight_scale_inv": torch.zeros(0, 1)},
              fp8 / "model.safetensors")
    qc = {"quant_method": "fp8", "weight_block_size": [128, 128]}
    (fp8 / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": qc}))
    _fails(capsys, ["audit", str(fp8)], 1, "model.safetensors", "tensor 'a.weight'", "holds no values")
    (fp8 / "config.json").unlink()
    _fails(capsys, ["audit", str(fp8 / "model.safetensors")], 1, "tensor 'a.weight'", "holds no values")


# ------------------------------------------------------------------------------------------------ failed writes


def test_destination_that_cannot_be_written(src, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    _fails(capsys, _quantize(src, tmp_path / "file" / "out"), 1, "file: exists and is not a folder")
    start = time.monotonic()
    _fails(capsys, ["audit", str(src), "--json", str(tmp_path)], 1, f"{tmp_path}: is a folder; give a file name")
    _fails(capsys, ["audit", str(src), "--report", str(tmp_path / "file")], 1, "exists and is not a folder")
    assert time.monotonic() - start < 5  # refused before the audit ran


def _run_cli(argv, env=None, preexec_fn=None, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(SRC_ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "blockfp8", *argv], capture_output=True, text=True, env=env,
                          preexec_fn=preexec_fn, timeout=timeout)


def test_disk_full_while_writing(src, tmp_path):
    """The file size limit makes every write past 64 KiB fail (EFBIG) like a full disk (ENOSPC) would."""

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    r = _run_cli(_quantize(src, tmp_path / "out"), preexec_fn=small_disk)
    assert r.returncode == 1, r.stderr
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "cannot write model.safetensors (File too large)" in err, err
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_permission_denied_destination(src, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    _fails(capsys, _quantize(src, ro / "out"), 1, f"{ro}: folder is not writable")


def test_any_os_error_is_one_line_naming_the_path(monkeypatch, capsys):
    """Whatever fails late (a permission, a full disk, a vanished folder), the handler in cli/main.py prints the
    path and the cause, exit 1."""
    import errno

    from blockfp8.cli import env_cmd

    def denied(args):
        raise PermissionError(errno.EACCES, "Permission denied", "/reports/r.json")

    monkeypatch.setattr(env_cmd, "run", denied)
    _fails(capsys, ["env"], 1, "blockfp8 env: error: /reports/r.json: Permission denied")


# ------------------------------------------------------------------------------------------------ configuration


@pytest.mark.parametrize("name,value,argv,expected", [
    ("BLOCKFP8_LOG_LEVEL", "bogus", ["env"], "valid values: DEBUG, INFO, WARNING, ERROR"),
    ("BLOCKFP8_LOG_LEVEL", "bogus", ["audit", "/nonexistent"], "valid values: DEBUG, INFO, WARNING, ERROR"),
    ("BLOCKFP8_USE_DEEP_GEMM", "yes", ["quantize", "/nonexistent", "/tmp/x"], "valid values: 0, 1"),
    ("BLOCKFP8_USE_DEEPGEMM", "1", ["env"], "did you mean BLOCKFP8_USE_DEEP_GEMM?"),
])
def test_environment_is_validated_for_every_subcommand(monkeypatch, capsys, name, value, argv, expected):
    monkeypatch.setenv(name, value)
    _fails(capsys, argv, 2, name, expected)


def test_eval_config_bombs_and_bad_files(tmp_path, capsys):
    anchors = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        anchors.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(anchors) + "\nmodel: smollm2\ntask: lambada\nvariants: *i\n")
    assert bomb.stat().st_size < 1024
    start = time.monotonic()
    _fails(capsys, ["eval", str(bomb)], 2, "bomb.yaml: line 2: YAML aliases (*name) are not accepted")
    assert time.monotonic() - start < 5
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("model: smollm2\ndescription: caf\xe9\n".encode("latin-1"))
    _fails(capsys, ["eval", str(latin1)], 2, "latin1.yaml: not UTF-8 text")
    deep = tmp_path / "deep.yaml"
    deep.write_text("model: " + "[" * 50_000 + "]" * 50_000 + "\n")
    _fails(capsys, ["eval", str(deep)], 2, "deep.yaml: nested more than 16 levels deep")
    notmodel = tmp_path / "notmodel.yaml"
    notmodel.write_text(f"model: {tmp_path}\ntask: lambada\nvariants: [{{name: a, accuracy_threshold: 0.1}}]\n")
    _fails(capsys, ["eval", str(notmodel)], 2, "field 'model'", "is a folder without config.json")
