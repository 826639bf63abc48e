"""Backend id -> backend class, built lazily once. Importing this module imports no backend module."""

from __future__ import annotations

import functools
import importlib

from blockfp8.backends.base import BackendId, GemmBackend

# Also the default preference order: a backend unsupported on a platform is skipped there, which gives
# Hopper deepgemm > scaled_mm > cute > triton > reference, family 100 deepgemm > triton > reference, elsewhere
# triton > reference (and reference alone on a CPU).
BACKENDS: dict[BackendId, tuple[str, str]] = {
    BackendId.DEEPGEMM: ("blockfp8.backends.deepgemm", "DeepGemmBackend"),
    BackendId.SCALED_MM: ("blockfp8.backends.scaled_mm", "ScaledMMBackend"),
    BackendId.CUTE: ("blockfp8.backends.cute", "CuteBackend"),
    BackendId.TRITON: ("blockfp8.backends.triton", "TritonBackend"),
    BackendId.REFERENCE: ("blockfp8.backends.reference", "ReferenceBackend"),
}
PREFERENCE_ORDER: tuple[BackendId, ...] = tuple(BACKENDS)


def parse_backend_id(value: BackendId | str, field_name: str = "backend") -> BackendId:
    """A concrete backend id ("auto" is not one)."""
    backend_id = BackendId.parse(value, field_name)
    if backend_id is BackendId.AUTO:
        valid = ", ".join(str(b) for b in PREFERENCE_ORDER)
        raise ValueError(f"{field_name}='auto' names no backend; valid values: {valid}")
    return backend_id


@functools.cache
def _instance(backend_id: BackendId) -> GemmBackend:
    module_name, class_name = BACKENDS[backend_id]
    return getattr(importlib.import_module(module_name), class_name)()


def get_backend(backend_id: BackendId | str) -> GemmBackend:
    """The backend instance for an id, built on first use and shared afterwards."""
    return _instance(parse_backend_id(backend_id))
