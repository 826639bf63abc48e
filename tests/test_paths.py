"""Path safety: links resolved before paths are compared, links never followed out of a folder (but into a Hugging
Face cache's blobs), FIFOs refused without blocking, bounded reads, nesting and quoting bounded."""

import os
import time

import pytest

from blockfp8 import paths
from blockfp8.paths import InputError


def test_same_or_nested_sees_through_links(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (tmp_path / "link").symlink_to(src)
    assert paths.same_or_nested(src, tmp_path / "link" / "out")  # DST through a symlinked parent is inside SRC
    assert paths.same_or_nested(tmp_path / "link", src)  # DST a link to SRC is SRC
    assert paths.same_or_nested(src / "a" / "..", src)
    assert paths.same_or_nested(tmp_path, src)  # SRC inside DST
    assert not paths.same_or_nested(src, tmp_path / "src2")  # a common name prefix is not nesting
    assert not paths.same_or_nested(src, tmp_path / "other")


def test_links_are_not_followed_out_of_a_folder(tmp_path):
    folder, outside = tmp_path / "model", tmp_path / "secret.txt"
    folder.mkdir()
    outside.write_text("secret")
    (folder / "inner.txt").write_text("x")
    (folder / "in").symlink_to(folder / "inner.txt")
    (folder / "out").symlink_to(outside)
    (folder / "up").symlink_to("../secret.txt")
    assert not paths.link_escapes(folder / "inner.txt", folder)
    assert not paths.link_escapes(folder / "in", folder)
    assert paths.link_escapes(folder / "out", folder) and paths.link_escapes(folder / "up", folder)


def test_a_hugging_face_cache_snapshot_may_link_into_its_blobs(tmp_path):
    repo = tmp_path / "models--org--name"
    snap, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    (blobs / "f00d").write_text("{}")
    (snap / "config.json").symlink_to("../../blobs/f00d")
    (snap / "stray").symlink_to(tmp_path / "elsewhere")
    assert not paths.link_escapes(snap / "config.json", snap)
    assert paths.link_escapes(snap / "stray", snap)


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    start = time.monotonic()
    with pytest.raises(InputError, match="a FIFO, not a regular file"):
        paths.open_regular(fifo)
    with pytest.raises(InputError, match="a folder"):
        paths.read_bounded(tmp_path, 10)
    assert time.monotonic() - start < 5
    assert not paths.is_regular(fifo) and not paths.is_regular(tmp_path / "missing")


def test_read_bounded(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"x" * 100)
    assert paths.read_bounded(f, 100) == b"x" * 100
    with pytest.raises(InputError, match="larger than"):
        paths.read_bounded(f, 99, "config")


def test_check_depth():
    assert paths.check_depth({"a": [1, {"b": []}]}) == 4
    assert paths.check_depth(3) == 0
    deep = []
    for _ in range(100_000):  # deeper than Python's recursion limit: the walk does not recurse
        deep = [deep]
    with pytest.raises(InputError, match="nested more than 32 levels"):
        paths.check_depth(deep)


def test_quote_is_short_whatever_the_value():
    deep = []
    for _ in range(100_000):
        deep = [deep]
    huge = {"k": ["v" * 10**6] * 10**4}
    start = time.monotonic()
    for value in (deep, huge, "s" * 10**7, 10**4000, list(range(10**6))):
        assert len(paths.quote(value)) <= 125  # the limit plus quotes and "..."
    assert time.monotonic() - start < 2
    assert paths.quote("model.layers.0.mlp") == "'model.layers.0.mlp'"
    assert paths.quote("x" * 500, 300) == repr("x" * 300) + "..."
