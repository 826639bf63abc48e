"""The one reader of a model's ``config.json`` (transformers' format), and the facts read from it.

Everything that needs the model type (the accuracy guard is keyed on it), whether the model has experts, or the
whole dict goes through here, so that a multimodal wrapper's ``text_config`` and the many spellings of the expert
count are handled the same way by the policy, the audit, the loader and the CLI.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from blockfp8.config import BlockFP8Config, ConfigError
from blockfp8.formats.errors import CheckpointError, read_json_file
from blockfp8.paths import link_escapes, quote

CONFIG_FILE = "config.json"
MAX_CONFIG_BYTES = 16 * 2**20  # a config.json is a few KB; refuse to parse anything absurd
# How transformers' model families spell the routed-expert count (Qwen-MoE, Mixtral, DeepSeek, others).
EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
# Upper bounds on the sizes a model is built from, each far above released models (DeepSeek-V3: 61 layers,
# hidden 7168, 256 experts, vocabulary 129280; Llama-3.1-405B: 126 layers, hidden 16384, intermediate 53248).
SIZE_LIMITS = {
    "num_hidden_layers": 1024,
    "hidden_size": 131072,
    "intermediate_size": 1 << 20,
    "moe_intermediate_size": 1 << 20,
    "vocab_size": 1 << 22,
    "num_attention_heads": 4096,
    "num_key_value_heads": 4096,
    "head_dim": 65536,
    "max_position_embeddings": 1 << 26,
    **{key: 65536 for key in EXPERT_COUNT_KEYS},
    "num_experts_per_tok": 65536,
}


def config_path(path: str | Path) -> Path:
    """``path`` itself when it names a file, else ``path/config.json``."""
    path = Path(path)
    return path / CONFIG_FILE if path.is_dir() else path


def read_config_json(path: str | Path) -> dict:
    """The JSON object in a model folder's ``config.json`` (or in ``path`` when it is the file itself).
    Raises :class:`CheckpointError` naming the file when it is missing, not a regular file, a link out of its
    folder, too large, nested too deeply, not JSON or not an object."""
    file = config_path(path)
    if not os.path.lexists(file):
        raise CheckpointError("config.json not found; a model folder needs one", file=Path(path))
    if file != Path(path) and link_escapes(file, path):
        raise CheckpointError("a symbolic link out of the model folder; links are not followed out of it", file=file)
    data = read_json_file(file, MAX_CONFIG_BYTES, "model config")
    if not isinstance(data, dict):
        raise CheckpointError("must hold a JSON object", file=file)
    return data


def check_model_sizes(config: Mapping[str, Any], file: str | Path) -> None:
    """Refuse a config whose sizes are not positive integers or are beyond any real model
    (:data:`SIZE_LIMITS`), before transformers builds anything from it: a model of ten million layers takes
    hours to build even with no weights, and a size given as a string fails deep inside transformers."""
    for scope, prefix in ((config, ""), (config.get("text_config"), "text_config.")):
        if not isinstance(scope, Mapping):
            continue
        for key, limit in SIZE_LIMITS.items():
            value = scope.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CheckpointError(f"field {prefix}{key}={quote(value)} must be a positive integer", file=file)
            if value > limit:
                raise CheckpointError(f"field {prefix}{key}={value} is beyond any real model (at most {limit} "
                                      "accepted): a corrupt or hostile config.json", file=file)


def _field(config: Any, key: str) -> Any:
    """``config[key]`` for a dict, ``config.key`` for a transformers ``PretrainedConfig``."""
    if isinstance(config, Mapping):
        return config.get(key)
    return getattr(config, key, None)


def text_model_type(config: Any) -> str | None:
    """The language model's type: ``text_config.model_type`` for multimodal wrappers, else ``model_type``.
    Takes a ``config.json`` dict or a transformers config object (``model.config``). The accuracy guard is keyed
    on this (vLLM reads ``hf_text_config.model_type`` too)."""
    text = _field(config, "text_config")
    inner = _field(text, "model_type") if text is not None else None
    outer = _field(config, "model_type")
    value = inner or outer
    return str(value) if value else None


def folder_model_type(folder: str | Path) -> str | None:
    """The text model type of a model folder, or None when it has no readable ``config.json`` (a bare
    safetensors file or folder is still auditable; the model type is then simply unknown)."""
    try:
        return text_model_type(read_config_json(folder))
    except CheckpointError:
        return None


def num_experts(config: Any) -> int:
    """The routed-expert count (0 for a dense model), from any of :data:`EXPERT_COUNT_KEYS`, at the top level or
    in ``text_config``."""
    scopes = [config, _field(config, "text_config")]
    counts = [_field(s, k) for s in scopes if s is not None for k in EXPERT_COUNT_KEYS]
    return max((int(c) for c in counts if isinstance(c, int) and not isinstance(c, bool)), default=0)


def hidden_size(config: Any) -> int | None:
    """The language model's hidden size (``text_config.hidden_size`` for multimodal wrappers), None when absent."""
    for scope in (_field(config, "text_config"), config):
        value = _field(scope, "hidden_size") if scope is not None else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def has_experts(config: Any) -> bool:
    """Whether the config describes an MoE model (more than one routed expert)."""
    return num_experts(config) > 1


def block_config(config: Mapping[str, Any], **overrides: Any) -> BlockFP8Config:
    """A :class:`BlockFP8Config` from a whole ``config.json`` dict: its ``quantization_config`` plus the text
    model type (``overrides`` win)."""
    if "quantization_config" not in config:
        raise ConfigError("config.json has no quantization_config: not an FP8 checkpoint")
    overrides.setdefault("model_type", text_model_type(config))
    return BlockFP8Config.from_hf_quant_config(config["quantization_config"], **overrides)
