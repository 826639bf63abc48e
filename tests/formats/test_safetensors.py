"""Lazy safetensors reading (single / sharded), corrupt-file detection, pickle refusal, the streaming writer."""

import json
import struct

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from blockfp8.formats import CheckpointError, SafetensorsCheckpoint, StreamingSafetensorsWriter, read_header

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.uint8, torch.int32, torch.bool]


def _bytes(t):
    return t.contiguous().reshape(-1).view(torch.uint8)


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(5, 7, generator=g).to(torch.float8_e4m3fn),
        "a.weight_scale_inv": torch.rand(1, 1, generator=g),
        "b": torch.randn(3, generator=g).bfloat16(),
        "c": torch.arange(6, dtype=torch.int32).reshape(2, 3),
    }


def test_single_file_reads_lazily(tmp_path):
    t = _tensors()
    save_file(t, tmp_path / "model.safetensors")
    with SafetensorsCheckpoint(tmp_path) as ckpt:
        assert set(ckpt.names()) == set(t) and len(ckpt) == 4 and "b" in ckpt
        assert ckpt.info("a.weight").dtype == torch.float8_e4m3fn and ckpt.info("c").shape == (2, 3)
        for name, value in t.items():
            assert torch.equal(ckpt.get(name).view(torch.uint8), value.view(torch.uint8))
        with pytest.raises(CheckpointError, match="'nope'"):
            ckpt.get("nope")


def _sharded(tmp_path, index_extra=None):
    t = _tensors()
    names = list(t)
    save_file({k: t[k] for k in names[:2]}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({k: t[k] for k in names[2:]}, tmp_path / "model-00002-of-00002.safetensors")
    wm = {k: ("model-00001-of-00002.safetensors" if i < 2 else "model-00002-of-00002.safetensors")
          for i, k in enumerate(names)}
    wm.update(index_extra or {})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    return t


def test_sharded_index(tmp_path):
    t = _sharded(tmp_path)
    ckpt = SafetensorsCheckpoint(tmp_path)
    assert len(ckpt.files) == 2 and ckpt.index_path is not None
    assert ckpt.info("c").file.name == "model-00002-of-00002.safetensors"
    assert torch.equal(ckpt.get("c"), t["c"])


def test_missing_shard_is_named(tmp_path):
    _sharded(tmp_path)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError) as e:
        SafetensorsCheckpoint(tmp_path)
    msg = str(e.value)
    assert "model.safetensors.index.json" in msg and "model-00002-of-00002.safetensors" in msg and "missing" in msg


def test_index_entry_not_in_its_shard(tmp_path):
    _sharded(tmp_path, {"ghost": "model-00001-of-00002.safetensors"})
    with pytest.raises(CheckpointError, match="'ghost'.*does not hold it"):
        SafetensorsCheckpoint(tmp_path)


def test_index_shard_outside_folder(tmp_path):
    _sharded(tmp_path, {"c": "../model-00002-of-00002.safetensors"})
    with pytest.raises(CheckpointError, match="not a plain file name"):
        SafetensorsCheckpoint(tmp_path)


@pytest.mark.parametrize("cut", [1, 3, 100])
def test_truncated_file_names_file_and_tensor(tmp_path, cut):
    save_file(_tensors(), tmp_path / "model.safetensors")
    raw = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(raw[: len(raw) - cut])
    with pytest.raises(CheckpointError) as e:
        SafetensorsCheckpoint(tmp_path)
    msg = str(e.value)
    assert "model.safetensors" in msg and ("truncated" in msg)


@pytest.mark.parametrize("raw,what", [
    (b"", "truncated or not a safetensors file"),
    (b"garbage!garbage!", "header length"),
    (struct.pack("<Q", 4) + b"{xx}", "not valid JSON"),
    (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
])
def test_corrupt_files(tmp_path, raw, what):
    p = tmp_path / "model.safetensors"
    p.write_bytes(raw)
    with pytest.raises(CheckpointError, match=what):
        read_header(p)


def test_header_overlap_and_bad_dtype(tmp_path):
    def write(header, data):
        h = json.dumps(header).encode()
        (tmp_path / "x.safetensors").write_bytes(struct.pack("<Q", len(h)) + h + data)

    write({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
           "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12))
    with pytest.raises(CheckpointError, match="tensor 'b': corrupt header: the tensor's data overlaps"):
        read_header(tmp_path / "x.safetensors")
    write({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 2]}}, bytes(2))
    with pytest.raises(CheckpointError, match="tensor 'a': dtype 'Q4' is not supported"):
        read_header(tmp_path / "x.safetensors")
    write({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8))
    with pytest.raises(CheckpointError, match="needs 12 bytes"):
        read_header(tmp_path / "x.safetensors")
    write({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(12))
    with pytest.raises(CheckpointError, match="covers 8 bytes of data but the file holds 12"):
        read_header(tmp_path / "x.safetensors")


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.pth", "model.ckpt"])
def test_pickles_are_refused(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(CheckpointError, match="pickle-based checkpoints are refused"):
        SafetensorsCheckpoint(tmp_path)
    with pytest.raises(CheckpointError, match="arbitrary code"):
        SafetensorsCheckpoint(tmp_path / name)


def test_empty_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        SafetensorsCheckpoint(tmp_path)


@given(st.lists(st.tuples(st.sampled_from(DTYPES), st.lists(st.integers(0, 5), max_size=3)), min_size=1, max_size=6))
def test_streaming_writer_matches_safetensors(tmp_path_factory, specs):
    path = tmp_path_factory.mktemp("w") / "out.safetensors"
    g = torch.Generator().manual_seed(len(specs))
    tensors = {}
    for i, (dtype, shape) in enumerate(specs):
        x = torch.randn(shape, generator=g) * 10
        tensors[f"t{i}"] = x.to(dtype)
    with StreamingSafetensorsWriter(path, [(n, t.dtype, t.shape) for n, t in tensors.items()]) as w:
        for n, t in tensors.items():
            w.write(n, t)
    back = load_file(path)
    assert set(back) == set(tensors)
    for n, t in tensors.items():
        assert back[n].dtype == t.dtype and back[n].shape == t.shape
        assert torch.equal(_bytes(back[n]), _bytes(t))  # bit for bit (NaN-safe)
    read_header(path)  # our own checks accept what we wrote


def test_streaming_writer_refuses_mismatches(tmp_path):
    plan = [("a", torch.float32, (2,)), ("b", torch.bfloat16, (3,))]
    w = StreamingSafetensorsWriter(tmp_path / "x.safetensors", plan)
    with pytest.raises(CheckpointError, match="out of order"):
        w.write("b", torch.zeros(3, dtype=torch.bfloat16))
    with pytest.raises(CheckpointError, match="planned torch.float32"):
        w.write("a", torch.zeros(3))
    w.write("a", torch.zeros(2))
    with pytest.raises(CheckpointError, match="never written"):
        w.close()


def test_links_in_a_checkpoint_folder(tmp_path):
    """A Hugging Face cache snapshot links every file into the repository's blobs/: read as usual. Any other link
    out of the folder (a shard, the index, config.json) is refused naming the file."""
    from blockfp8.formats import read_config_json

    repo = tmp_path / "models--org--name"
    snap, blobs = repo / "snapshots" / "0123abc", repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    t = _tensors()
    save_file(t, blobs / "aa11")
    (blobs / "bb22").write_text('{"model_type": "llama"}')
    (snap / "model.safetensors").symlink_to("../../blobs/aa11")
    (snap / "config.json").symlink_to("../../blobs/bb22")
    with SafetensorsCheckpoint(snap) as ckpt:
        assert torch.equal(ckpt.get("c"), t["c"])
    assert read_config_json(snap) == {"model_type": "llama"}
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("model.safetensors", "config.json"):
        (plain / name).symlink_to(snap / name)
    with pytest.raises(CheckpointError, match="model.safetensors: a symbolic link out of the folder"):
        SafetensorsCheckpoint(plain)
    with pytest.raises(CheckpointError, match="config.json: a symbolic link out of the model folder"):
        read_config_json(plain)
    (plain / "model.safetensors").unlink()
    (plain / "model.safetensors.index.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(CheckpointError, match="index.json: a symbolic link out of the folder"):
        SafetensorsCheckpoint(plain)
