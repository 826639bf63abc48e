"""Checkpoint formats: HF `fp8` and compressed-tensors block-FP8 configs and tensor names, lazy safetensors
reading (single file or sharded), and the streaming quantize writer. CPU only: never imports nn or a GPU
backend (the audit reads checkpoints with it on machines without a GPU)."""

from blockfp8.formats.errors import CheckpointError
from blockfp8.formats.fp8 import FP8Checkpoint, FP8Weight, iter_fp8_tensors
from blockfp8.formats.hf_config import read_config_json
from blockfp8.formats.quant_config import (
    CheckpointQuantConfig,
    fp8_quant_config_dict,
    matches_any,
    parse_quant_config,
    read_quant_config,
)
from blockfp8.formats.safetensors_io import SafetensorsCheckpoint, StreamingSafetensorsWriter, read_header
from blockfp8.formats.writer import QuantizeCheckpointReport, TensorSelector, quantize_checkpoint

__all__ = [
    "CheckpointError",
    "CheckpointQuantConfig",
    "FP8Checkpoint",
    "FP8Weight",
    "QuantizeCheckpointReport",
    "SafetensorsCheckpoint",
    "StreamingSafetensorsWriter",
    "TensorSelector",
    "fp8_quant_config_dict",
    "iter_fp8_tensors",
    "matches_any",
    "parse_quant_config",
    "quantize_checkpoint",
    "read_config_json",
    "read_header",
    "read_quant_config",
]
