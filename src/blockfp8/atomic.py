"""Writes that never leave a half-written file or folder: write beside the target, then rename over it (atomic on
POSIX). Files: :func:`write_with` and its helpers. Folders (a whole checkpoint): :func:`partial_folder` to write
into, :func:`publish_folder` to move it into place without clobbering, :func:`reclaim_stale` for the partial
folders of killed runs; :func:`check_target` validates an output path before the long work starts.
Stdlib only, so every layer can use it."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_with(path: str | os.PathLike, writer: Callable[[str], None]) -> Path:
    """Call ``writer(tmp_path)`` and rename the result onto ``path``; on any error the temporary file is removed
    and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name beside the target (same file system, so the rename is atomic) that keeps the suffix, which
    # writers such as matplotlib's savefig read the format from.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the result is readable like any other output
    try:
        writer(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename in (None, tmp):  # name the file the user asked for, not our temporary one
            raise type(exc)(exc.errno, exc.strerror, str(path)) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return write_with(path, _write)


def write_json(path: str | os.PathLike, payload, *, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """``payload`` as JSON plus a final newline. Non-finite floats are refused (``allow_nan=False``): JSON has
    no NaN, and a report that silently holds one is worse than an error."""
    return write_text(path, json.dumps(payload, indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n")


# ------------------------------------------------------------------------------------------------ folders

# renameat2(2) flags (linux/fs.h): fail instead of replacing an existing DST; swap two paths in one step.
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100
PARTIAL = ".partial-"


def check_target(path: str | os.PathLike, *, folder: bool = False) -> Path:
    """Fail now, before the long work, when ``path`` cannot be written later: it is a folder where a file is
    wanted (or a file where a folder is), or its nearest existing parent is not a writable folder. Raises an
    ``OSError`` naming the path."""
    p = Path(os.path.abspath(path))
    if p.is_dir() and not folder:
        raise IsADirectoryError(errno.EISDIR, "is a folder; give a file name", str(p))
    if folder and p.exists() and not p.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder", str(p))
    parent = p if folder and p.is_dir() else p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "is not a folder, so nothing can be written under it", str(parent))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "folder is not writable", str(parent))
    return p


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def partial_folder(dst: Path) -> Path:
    """Create and return a fresh ``.<DST>.partial-<host>-<pid>-<random>`` folder beside ``dst`` (the same file
    system, so publishing it is a rename). The owner is in the name, so :func:`reclaim_stale` can tell a folder of
    a killed run from one still being written."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}{PARTIAL}{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    return tmp


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def reclaim_stale(dst: Path) -> list[Path]:
    """Remove the partial folders of ``dst`` left by runs on this host whose process is gone (killed, or the
    machine lost power); a folder of a live process, another host or an unknown owner is left alone."""
    prefix, host, removed = f".{dst.name}{PARTIAL}", _host_tag(), []
    if not dst.parent.is_dir():
        return removed
    with _locked(dst.parent):
        for p in dst.parent.iterdir():
            if not p.name.startswith(prefix) or p.is_symlink() or not p.is_dir():
                continue
            owner = p.name[len(prefix):].split("-")
            if len(owner) >= 3 and owner[0] == host and owner[1].isdigit() and not _alive(int(owner[1])):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` (flock on the folder itself: no lock file to leave behind) among blockfp8
    processes; a no-op where flock is not available."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """renameat2(src, dst, flags); False when this system has no such call (not Linux, an old libc or kernel, a
    file system without the flag), so the caller falls back to rename under the lock."""
    try:
        import ctypes

        fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    except OSError:  # pragma: no cover
        return False
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def publish_folder(tmp: Path, dst: Path, *, overwrite: bool) -> None:
    """Move the finished folder ``tmp`` to ``dst``, deciding about an existing ``dst`` now, not when the run
    started: without ``overwrite`` a ``dst`` that appeared meanwhile raises ``FileExistsError`` and is left as it
    is; with it, ``dst`` (a folder) is swapped for ``tmp`` in one step, so at every moment ``dst`` holds the old
    or the new folder, never nothing. Serialised among blockfp8 writers by a lock on the parent folder; the
    create-if-absent itself is ``renameat2(RENAME_NOREPLACE)`` where the system has it."""
    with _locked(dst.parent):
        if os.path.lexists(dst):
            if not overwrite:
                raise FileExistsError(errno.EEXIST, "appeared while this run was writing; it was left as it is "
                                      "(pass --overwrite to replace it)", str(dst))
            if dst.is_symlink() or not dst.is_dir():
                raise FileExistsError(errno.EEXIST, "exists and is not a folder; not replaced", str(dst))
            if _renameat2(tmp, dst, _RENAME_EXCHANGE):
                shutil.rmtree(tmp)  # tmp now holds the old folder, still under a partial name if this is cut short
                return
            old = tmp.with_name(tmp.name + "-old")
            os.rename(dst, old)
            os.rename(tmp, dst)
            shutil.rmtree(old)
            return
        if not _renameat2(tmp, dst, _RENAME_NOREPLACE):
            os.rename(tmp, dst)
