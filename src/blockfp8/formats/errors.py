"""The one error type of checkpoint reading and writing, and the one bounded JSON read of a checkpoint file."""

from __future__ import annotations

from pathlib import Path

from blockfp8.paths import InputError, check_depth, quote, read_bounded


class CheckpointError(InputError):
    """A checkpoint folder, file or tensor is unusable. The message names the file and, when there is one,
    the tensor or config field, and says what is wrong. An :class:`~blockfp8.paths.InputError` (a ValueError), so
    the CLI's one handler reports it without importing this package."""

    def __init__(self, message: str, *, file: str | Path | None = None, tensor: str | None = None):
        where = []
        if file is not None:
            where.append(str(file))
        if tensor is not None:
            where.append(f"tensor {quote(tensor, 300)}")
        super().__init__(f"{': '.join(where)}: {message}" if where else message)
        self.file = None if file is None else str(file)
        self.tensor = tensor


def read_json_file(file: Path, limit: int, what: str):
    """The JSON value in ``file`` (at most ``limit`` bytes, bounded nesting), or a :class:`CheckpointError`
    naming the file and what is wrong with it (``what``: "model config", "safetensors index", ...)."""
    import json

    try:
        data = json.loads(read_bounded(file, limit, what))
        check_depth(data)
    except InputError as exc:
        raise CheckpointError(str(exc).removeprefix(f"{file}: "), file=file) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read it ({exc.strerror or exc})", file=file) from None
    except RecursionError:
        raise CheckpointError(f"JSON nested too deeply: not a {what}", file=file) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, a number of 4300+ digits
        raise CheckpointError(f"not valid JSON ({quote(str(exc), 200)})", file=file) from None
    return data
