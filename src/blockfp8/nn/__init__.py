"""Block-FP8 layers and whole-model conversion. Layers reach kernels only through ``backends.select``."""

from blockfp8.nn.convert import QuantizeReport, quantize_model
from blockfp8.nn.linear import BlockFP8Linear
from blockfp8.nn.load import ModelTensorSelector, load_fp8_checkpoint
from blockfp8.nn.moe import BlockFP8Experts, BlockFP8MoE, select_experts
from blockfp8.nn.tp import ColumnParallelBlockFP8Linear, RowParallelBlockFP8Linear, validate_block_partition
from blockfp8.nn.warmup import WarmupRecord, warmup

__all__ = [
    "BlockFP8Experts",
    "BlockFP8Linear",
    "BlockFP8MoE",
    "ColumnParallelBlockFP8Linear",
    "ModelTensorSelector",
    "QuantizeReport",
    "RowParallelBlockFP8Linear",
    "load_fp8_checkpoint",
    "quantize_model",
    "select_experts",
    "validate_block_partition",
    "warmup",
    "WarmupRecord",
]
