"""Publishing files and folders: nothing half-written, nothing clobbered that appeared meanwhile, an overwrite that
never leaves DST missing, stale partial folders of dead runs reclaimed (and only those), output paths checked
before the work."""

import errno
import os
import subprocess
import sys

import pytest

from blockfp8 import atomic


def _folder(path, **files):
    path.mkdir()
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def _listing(parent):
    return sorted(p.name for p in parent.iterdir())


def test_a_failed_file_write_names_the_target_and_leaves_nothing(tmp_path):
    target = tmp_path / "out.json"

    def fail(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as e:
        atomic.write_with(target, fail)
    assert e.value.filename == str(target) and e.value.errno == errno.ENOSPC
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "rename-under-lock"])
def test_publish_never_replaces_a_dst_that_appeared(tmp_path, monkeypatch, renameat2):
    if not renameat2:
        monkeypatch.setattr(atomic, "_renameat2", lambda *a: False)
    dst = tmp_path / "out"
    tmp = atomic.partial_folder(dst)
    (tmp / "new.txt").write_text("new")
    _folder(dst, **{"theirs.txt": "someone else's"})
    with pytest.raises(FileExistsError, match="appeared while this run was writing"):
        atomic.publish_folder(tmp, dst, overwrite=False)
    assert _listing(dst) == ["theirs.txt"] and (tmp / "new.txt").exists()


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "rename-under-lock"])
def test_publish_with_overwrite_swaps_and_cleans_up(tmp_path, monkeypatch, renameat2):
    if not renameat2:
        monkeypatch.setattr(atomic, "_renameat2", lambda *a: False)
    dst = _folder(tmp_path / "out", **{"old.txt": "old"})
    tmp = atomic.partial_folder(dst)
    (tmp / "new.txt").write_text("new")
    atomic.publish_folder(tmp, dst, overwrite=True)
    assert _listing(dst) == ["new.txt"] and _listing(tmp_path) == ["out"]
    fresh = tmp_path / "fresh"
    tmp = atomic.partial_folder(fresh)
    atomic.publish_folder(tmp, fresh, overwrite=True)  # --overwrite with nothing there: a plain publish
    assert _listing(tmp_path) == ["fresh", "out"]


def test_publish_refuses_to_replace_a_file_or_a_link(tmp_path):
    for make in (lambda p: p.write_text("a file"), lambda p: p.symlink_to(tmp_path / "elsewhere")):
        dst = tmp_path / "dst"
        make(dst)
        tmp = atomic.partial_folder(dst)
        with pytest.raises(FileExistsError, match="not a folder"):
            atomic.publish_folder(tmp, dst, overwrite=True)
        assert dst.is_symlink() or dst.read_text() == "a file"
        tmp.rmdir()
        dst.unlink()


def test_reclaim_removes_only_partials_of_dead_runs(tmp_path):
    dst = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = atomic._host_tag()
    stale = _folder(tmp_path / f".out{atomic.PARTIAL}{host}-{int(dead.stdout)}-0a0a0a0a")
    stale_old = _folder(tmp_path / f".out{atomic.PARTIAL}{host}-{int(dead.stdout)}-0b0b0b0b-old")
    mine = atomic.partial_folder(dst)  # this process: alive
    other_host = _folder(tmp_path / f".out{atomic.PARTIAL}ffffffff-{int(dead.stdout)}-0c0c0c0c")
    unknown = _folder(tmp_path / f".out{atomic.PARTIAL}whatever")
    other_name = _folder(tmp_path / f".other{atomic.PARTIAL}{host}-{int(dead.stdout)}-0d0d0d0d")
    assert sorted(atomic.reclaim_stale(dst)) == sorted([stale, stale_old])
    assert all(p.is_dir() for p in (mine, other_host, unknown, other_name))


def test_check_target(tmp_path):
    (tmp_path / "file").write_text("x")
    assert atomic.check_target(tmp_path / "new" / "deeper" / "r.json") == tmp_path / "new" / "deeper" / "r.json"
    with pytest.raises(IsADirectoryError, match="is a folder; give a file name"):
        atomic.check_target(tmp_path)
    with pytest.raises(NotADirectoryError, match="exists and is not a folder"):
        atomic.check_target(tmp_path / "file", folder=True)
    with pytest.raises(NotADirectoryError) as e:
        atomic.check_target(tmp_path / "file" / "r.json")
    assert e.value.filename == str(tmp_path / "file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_check_target_read_only(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    with pytest.raises(PermissionError, match="not writable"):
        atomic.check_target(ro / "r.json")
