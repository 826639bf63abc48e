"""Safetensors only: a lazy reader over a single file or a sharded folder (``model.safetensors.index.json``),
and a streaming writer that writes one tensor at a time.

Every header is parsed and checked up front (tensor dtypes, shapes, byte ranges, file length), so a truncated
or corrupt file is reported with its name and the tensor that does not fit before anything is loaded; tensor
data is read only when asked for. Pickle-based checkpoints (``.bin``, ``.pt``, ...) are refused: loading a
pickle can run arbitrary code.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from blockfp8.formats.errors import CheckpointError, read_json_file
from blockfp8.paths import InputError, link_escapes, open_regular, quote

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
MAX_INDEX_BYTES = 64 * 1024 * 1024  # an index holds one short line per tensor

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
if hasattr(torch, "float8_e8m0fnu"):
    DTYPES["F8_E8M0"] = torch.float8_e8m0fnu
for _code, _name in (("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64")):
    if hasattr(torch, _name):
        DTYPES[_code] = getattr(torch, _name)
DTYPE_CODES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}


def dtype_code(dtype: torch.dtype) -> str:
    if dtype not in DTYPE_CODES:
        raise CheckpointError(f"dtype {dtype} cannot be stored in safetensors here")
    return DTYPE_CODES[dtype]


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is, from the file header (no data read)."""

    name: str
    file: Path
    dtype_code: str
    shape: tuple[int, ...]
    offsets: tuple[int, int]  # byte range in the data section

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.dtype_code]

    @property
    def nbytes(self) -> int:
        return self.offsets[1] - self.offsets[0]


def read_header(path: str | Path) -> tuple[dict[str, str], dict[str, TensorInfo]]:
    """Parse and check a safetensors header: ``(metadata, {name: TensorInfo})`` in data order."""
    path = Path(path)
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"truncated or not a safetensors file ({size} bytes, no header)", file=path)
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or n > size - 8:
                raise CheckpointError(
                    f"corrupt or truncated: header length {n} does not fit in a file of {size} bytes", file=path
                )
            raw = f.read(n)
    except InputError as exc:
        raise CheckpointError(str(exc).split(": ", 1)[-1], file=path) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read ({exc.strerror or exc})", file=path) from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:  # ValueError: JSONDecodeError, an int of 4300+ digits
        raise CheckpointError(f"corrupt header: not valid JSON ({quote(str(exc), 200)})", file=path) from None
    except RecursionError:
        raise CheckpointError("corrupt header: JSON nested too deeply", file=path) from None
    if not isinstance(header, dict):
        raise CheckpointError("corrupt header: not a JSON object", file=path)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError("corrupt header: __metadata__ is not an object of strings", file=path)
    data_len = size - 8 - n
    infos: list[TensorInfo] = []
    for name, entry in header.items():
        if not isinstance(entry, dict):
            raise CheckpointError("corrupt header entry", file=path, tensor=name)
        code, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(code, str) or code not in DTYPES:
            raise CheckpointError(f"dtype {quote(code)} is not supported; known: {', '.join(DTYPES)}", file=path,
                                  tensor=name)
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise CheckpointError(f"corrupt header: shape {quote(shape)}", file=path, tensor=name)
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise CheckpointError(f"corrupt header: data_offsets {quote(offsets)}", file=path, tensor=name)
        want = math.prod(shape) * _itemsize(DTYPES[code])
        if offsets[1] - offsets[0] != want:
            raise CheckpointError(
                f"corrupt header: shape {quote(shape)} of {code} needs {quote(want)} bytes, data_offsets give "
                f"{offsets[1] - offsets[0]}",
                file=path,
                tensor=name,
            )
        if offsets[1] > data_len:
            raise CheckpointError(
                f"truncated: the tensor needs bytes [{offsets[0]}, {offsets[1]}) of the data section, the file "
                f"holds {data_len} (is the download or copy complete?)",
                file=path,
                tensor=name,
            )
        infos.append(TensorInfo(name, path, code, tuple(shape), (offsets[0], offsets[1])))
    infos.sort(key=lambda i: i.offsets)
    pos = 0
    for info in infos:
        if info.offsets[0] != pos:
            what = "overlaps the previous tensor" if info.offsets[0] < pos else f"leaves a gap at byte {pos}"
            raise CheckpointError(f"corrupt header: the tensor's data {what}", file=path, tensor=info.name)
        pos = info.offsets[1]
    if pos != data_len:
        raise CheckpointError(
            f"corrupt: the header covers {pos} bytes of data but the file holds {data_len} after the header",
            file=path,
        )
    return {str(k): str(v) for k, v in metadata.items()}, {i.name: i for i in infos}


def refuse_pickle(path: str | Path) -> None:
    p = Path(path)
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            "pickle-based checkpoints are refused: loading a pickle can run arbitrary code. Convert it to "
            "safetensors with a tool you trust first (e.g. load it in a sandbox and save with safetensors)",
            file=p,
        )


def _inside(path: Path, folder: Path) -> Path:
    """``path`` when it stays inside ``folder`` after resolving links; a link out of the folder is not followed."""
    if link_escapes(path, folder):
        raise CheckpointError(f"a symbolic link out of the folder (to {path.resolve()}); links are not followed "
                              "out of a checkpoint folder", file=path)
    return path


def _read_index(index: Path) -> dict[str, str]:
    data = read_json_file(index, MAX_INDEX_BYTES, "safetensors index")
    wm = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(wm, dict) or not wm or not all(isinstance(v, str) for v in wm.values()):
        raise CheckpointError("field weight_map is missing, empty or not a {tensor: shard} object", file=index)
    return wm


def _resolve_files(folder: Path) -> tuple[list[Path], Path | None, dict[str, str] | None]:
    """(shard files, index path, weight_map) for a folder or a single .safetensors file."""
    if folder.is_file():
        refuse_pickle(folder)
        if folder.suffix != ".safetensors":
            raise CheckpointError("not a .safetensors file", file=folder)
        return [folder], None, None
    if not folder.is_dir():
        raise CheckpointError("no such checkpoint folder or file", file=folder)
    index = folder / INDEX_FILE
    if os.path.lexists(index):
        wm = _read_index(_inside(index, folder))
        shards: dict[str, Path] = {}  # a dict: 90k index entries name a few hundred shards
        for tensor, shard in wm.items():
            if shard in shards:
                continue
            if Path(shard).name != shard or shard in ("", ".", ".."):
                raise CheckpointError(f"shard {quote(shard)} is not a plain file name in the folder", file=index,
                                      tensor=tensor)
            p = folder / shard
            refuse_pickle(p)
            if not os.path.lexists(p):
                raise CheckpointError(f"shard {quote(shard)} named in the index is missing", file=index,
                                      tensor=tensor)
            shards[shard] = _inside(p, folder)
        return list(shards.values()), index, wm
    single = folder / SINGLE_FILE
    if os.path.lexists(single):
        return [_inside(single, folder)], None, None
    found = sorted(folder.glob("*.safetensors"))
    if found:
        return [_inside(p, folder) for p in found], None, None
    pickles = sorted(p for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        refuse_pickle(pickles[0])
    raise CheckpointError(f"no {SINGLE_FILE}, {INDEX_FILE} or *.safetensors file", file=folder)


class SafetensorsCheckpoint:
    """Lazy view of a checkpoint: headers parsed at open, tensors read on :meth:`get`.

    Use as a context manager (or call :meth:`close`) to release the memory maps.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.files, self.index_path, weight_map = _resolve_files(self.path)
        self.metadata: dict[Path, dict[str, str]] = {}
        self._infos: dict[str, TensorInfo] = {}
        self._by_file: dict[Path, list[str]] = {}
        for f in self.files:
            meta, infos = read_header(f)
            self.metadata[f] = meta
            names = []
            for name, info in infos.items():
                if weight_map is not None and weight_map.get(name) != f.name:
                    continue  # the index is the truth for sharded checkpoints
                if name in self._infos:
                    raise CheckpointError(f"tensor also stored in {self._infos[name].file}", file=f, tensor=name)
                self._infos[name] = info
                names.append(name)
            self._by_file[f] = names
        if weight_map is not None:
            for name, shard in weight_map.items():
                if name not in self._infos:
                    raise CheckpointError(f"the index places this tensor in {shard!r}, which does not hold it",
                                          file=self.index_path, tensor=name)
        self._handles: dict[Path, object] = {}

    # ------------------------------------------------------------------ lookup
    def names(self) -> list[str]:
        """Every tensor name, file by file, in data order."""
        return [n for f in self.files for n in self._by_file[f]]

    def names_in(self, file: Path) -> list[str]:
        return list(self._by_file[file])

    def __contains__(self, name: str) -> bool:
        return name in self._infos

    def __len__(self) -> int:
        return len(self._infos)

    def info(self, name: str) -> TensorInfo:
        if name not in self._infos:
            raise CheckpointError("tensor not found in the checkpoint", file=self.path, tensor=name)
        return self._infos[name]

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor (CPU)."""
        info = self.info(name)
        try:
            from safetensors import SafetensorError, safe_open
        except ImportError:  # pragma: no cover - safetensors is a hard dependency
            raise CheckpointError("reading checkpoints needs the `safetensors` package") from None
        try:
            handle = self._handles.get(info.file)
            if handle is None:
                handle = safe_open(str(info.file), framework="pt", device="cpu")
                self._handles[info.file] = handle
            return handle.get_tensor(name)
        except SafetensorError as exc:
            raise CheckpointError(f"cannot read ({exc})", file=info.file, tensor=name) from None

    def close(self) -> None:
        self._handles.clear()

    def __enter__(self) -> SafetensorsCheckpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


class StreamingSafetensorsWriter:
    """Write a safetensors file one tensor at a time: the header (names, dtypes, shapes, byte ranges) is
    planned up front, then each tensor's bytes are appended in the planned order. Peak memory is the tensor
    being written, not the file."""

    def __init__(
        self,
        path: str | Path,
        entries: Sequence[tuple[str, torch.dtype, Sequence[int]]],
        metadata: dict[str, str] | None = None,
    ):
        self.path = Path(path)
        self._order = [(name, dtype, tuple(int(d) for d in shape)) for name, dtype, shape in entries]
        if len({n for n, _, _ in self._order}) != len(self._order):
            raise CheckpointError("duplicate tensor names in the plan", file=self.path)
        header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
        pos = 0
        for name, dtype, shape in self._order:
            nbytes = math.prod(shape) * _itemsize(dtype)
            header[name] = {"dtype": dtype_code(dtype), "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
            pos += nbytes
        self.data_bytes = pos
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        self._f = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        with self._naming_the_file():
            self._f.write(struct.pack("<Q", len(raw)))
            self._f.write(raw)
        self._next = 0

    @contextlib.contextmanager
    def _naming_the_file(self) -> Iterator[None]:
        """A failed write (a full disk) raises OSError without a file name; give it ours."""
        try:
            yield
        except OSError as exc:
            if exc.filename is not None:
                raise
            raise type(exc)(exc.errno, exc.strerror, str(self.path)) from None

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self._order):
            raise CheckpointError("more tensors written than planned", file=self.path, tensor=name)
        want_name, want_dtype, want_shape = self._order[self._next]
        if name != want_name:
            raise CheckpointError(f"written out of order: expected {want_name!r} next", file=self.path, tensor=name)
        if tensor.dtype != want_dtype or tuple(tensor.shape) != want_shape:
            raise CheckpointError(
                f"planned {want_dtype} {list(want_shape)}, got {tensor.dtype} {list(tensor.shape)}",
                file=self.path,
                tensor=name,
            )
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        with self._naming_the_file():
            self._f.write(memoryview(data))
        self._next += 1

    def close(self) -> None:
        if self._f.closed:
            return
        missing = [n for n, _, _ in self._order[self._next:]]
        with self._naming_the_file():
            self._f.close()  # flushes: the last write can fail here
        if missing:
            raise CheckpointError(f"{len(missing)} planned tensors were never written (first: {missing[0]!r})",
                                  file=self.path)

    def abort(self) -> None:
        if not self._f.closed:
            with contextlib.suppress(OSError):  # the error being handled is the one to report
                self._f.close()

    def __enter__(self) -> StreamingSafetensorsWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
