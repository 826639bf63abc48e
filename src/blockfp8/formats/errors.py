"""The one error type of checkpoint reading and writing."""

from __future__ import annotations

from pathlib import Path

from blockfp8.paths import InputError, quote


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
