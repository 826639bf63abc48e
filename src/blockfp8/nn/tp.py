"""Tensor parallelism for :class:`BlockFP8Linear` over ``torch.distributed`` (any backend: NCCL, gloo).

* Column parallel: the output features are split across ranks; a merged layer (``output_sizes``, e.g.
  ``[q, k, v]`` or ``[gate, up]``) splits each logical output separately, as vLLM's merged column layers do.
  ``gather_output`` all-gathers the pieces back into the unsharded order.
* Row parallel: the input features are split; each rank multiplies its slice and the partial outputs are
  all-reduced (summed); the bias is added once, after the reduction.

A shard owns whole weight blocks only: a partition boundary must fall on a block boundary. The rule is vLLM's
``validate_fp8_block_shape``: with a row-parallel split, ``K / tp`` must be a multiple of ``block_k``; with a
column-parallel split, every output partition ``size_j / tp`` must be a multiple of ``block_n``; a merged
layer that is not split may have a ragged *last* part (its blocks are the last ones), but every earlier part
must end on a block boundary. Because a row shard's K range starts on a multiple of ``block_k``, its 1 x bk
activation groups are exactly the unsharded ones: the only difference from the unsharded layer is the order
of the final sum.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from blockfp8.nn.linear import BlockFP8Linear
from blockfp8.platform import Platform
from blockfp8.quant import reference as ref


class BlockPartitionError(ValueError):
    """A tensor-parallel partition boundary would cut through a quantization block."""


def validate_block_partition(
    *,
    input_size: int,
    output_size: int,
    input_size_per_partition: int,
    output_partition_sizes: Sequence[int],
    block_size: Sequence[int],
    tp_size: int,
    name: str = "layer",
) -> None:
    """vLLM's block-alignment rule (see the module docstring); raises :class:`BlockPartitionError`."""
    bn, bk = ref.normalize_block_size(block_size)
    if tp_size > 1 and input_size // input_size_per_partition == tp_size and input_size_per_partition % bk:
        raise BlockPartitionError(
            f"{name}: row-parallel input partition of {input_size_per_partition} (K={input_size} over {tp_size} "
            f"ranks) is not a multiple of block_k={bk}: a partition boundary would cut a weight block"
        )
    is_tp_split = tp_size > 1 and output_size // sum(output_partition_sizes) == tp_size
    is_merged = len(output_partition_sizes) > 1
    if is_tp_split or is_merged:
        check = list(output_partition_sizes) if is_tp_split else list(output_partition_sizes)[:-1]
        for j, size in enumerate(check):
            if size % bn:
                what = (f"column-parallel output partition {j} of {size} rows ({tp_size} ranks)" if is_tp_split
                        else f"merged part {j} of {size} rows (only the last merged part may be ragged)")
                raise BlockPartitionError(
                    f"{name}: {what} is not a multiple of block_n={bn}: a partition boundary would cut a weight block"
                )


def _check_rank(rank: int, world_size: int) -> None:
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size={world_size!r} must be a positive integer")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank!r} must be in [0, {world_size})")


def column_shard(weight: torch.Tensor, scale: torch.Tensor, rank: int, world_size: int,
                 block_size: Sequence[int] = (128, 128), output_sizes: Sequence[int] | None = None,
                 name: str = "layer") -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """This rank's rows of a (merged) FP8 weight and its scales: ``(weight, scale, row ranges)``."""
    _check_rank(rank, world_size)
    bn, _ = ref.normalize_block_size(block_size)
    n, k = weight.shape
    sizes = list(output_sizes) if output_sizes is not None else [n]
    if sum(sizes) != n or any(s <= 0 for s in sizes):
        raise ValueError(f"{name}: output_sizes {sizes} must be positive and sum to N={n}")
    for j, s in enumerate(sizes):
        if s % world_size:
            raise BlockPartitionError(f"{name}: output part {j} of {s} rows does not split evenly over {world_size} "
                                      "ranks")
    parts = [s // world_size for s in sizes]
    validate_block_partition(input_size=k, output_size=n, input_size_per_partition=k, output_partition_sizes=parts,
                             block_size=block_size, tp_size=world_size, name=name)
    ranges, offset = [], 0
    for s, p in zip(sizes, parts, strict=True):
        ranges.append((offset + rank * p, offset + (rank + 1) * p))
        offset += s
    w = torch.cat([weight[a:b] for a, b in ranges])
    if world_size == 1:
        return w, scale, ranges
    s = torch.cat([scale[a // bn: ref.cdiv(b, bn)] for a, b in ranges])
    return w, s, ranges


def row_shard(weight: torch.Tensor, scale: torch.Tensor, rank: int, world_size: int,
              block_size: Sequence[int] = (128, 128), name: str = "layer") -> tuple[torch.Tensor, torch.Tensor, int]:
    """This rank's input columns of an FP8 weight and its scales: ``(weight, scale, first column)``."""
    _check_rank(rank, world_size)
    _, bk = ref.normalize_block_size(block_size)
    n, k = weight.shape
    if k % world_size:
        raise BlockPartitionError(f"{name}: K={k} does not split evenly over {world_size} ranks")
    kp = k // world_size
    validate_block_partition(input_size=k, output_size=n, input_size_per_partition=kp, output_partition_sizes=[n],
                             block_size=block_size, tp_size=world_size, name=name)
    a = rank * kp
    if world_size == 1:
        return weight, scale, 0
    return weight[:, a:a + kp].contiguous(), scale[:, a // bk:(a + kp) // bk].contiguous(), a


def merge_column_weights(parts: Sequence[tuple[torch.Tensor, torch.Tensor]], block_size: Sequence[int] = (128, 128),
                         name: str = "layer") -> tuple[torch.Tensor, torch.Tensor]:
    """Stack separately quantized FP8 weights (q, k, v; gate, up) into one merged weight and its scales: valid only
    when every part but the last ends on a block boundary (the scale rows are then simply stacked)."""
    validate_block_partition(input_size=parts[0][0].shape[1], output_size=sum(w.shape[0] for w, _ in parts),
                             input_size_per_partition=parts[0][0].shape[1],
                             output_partition_sizes=[w.shape[0] for w, _ in parts], block_size=block_size,
                             tp_size=1, name=name)
    return torch.cat([w for w, _ in parts]), torch.cat([s for _, s in parts])


def _group_info(group) -> tuple[int, int]:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialized: call init_process_group first")
    return dist.get_rank(group), dist.get_world_size(group)


class ColumnParallelBlockFP8Linear(nn.Module):
    """This rank's output rows of a (merged) :class:`BlockFP8Linear`."""

    def __init__(self, layer: BlockFP8Linear, *, output_sizes: Sequence[int] | None = None,
                 gather_output: bool = True, group=None, platform: Platform | None = None):
        super().__init__()
        self.group = group
        self.rank, self.world_size = _group_info(group)
        self.gather_output = gather_output
        self.output_sizes = list(output_sizes) if output_sizes is not None else [layer.out_features]
        w, s, ranges = column_shard(layer.weight.data, layer.weight_scale_inv.data, self.rank, self.world_size,
                                    layer.block_size, self.output_sizes, layer.name or "layer")
        bias = None if layer.bias is None else torch.cat([layer.bias.data[a:b] for a, b in ranges])
        self.local = BlockFP8Linear.from_fp8(w, s, bias, config=layer.config, params_dtype=layer.params_dtype,
                                             name=f"{layer.name or 'layer'}[tp{self.rank}]", platform=platform)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        y = self.local(x)
        if not self.gather_output or self.world_size == 1:
            return y
        pieces = [torch.empty_like(y) for _ in range(self.world_size)]
        dist.all_gather(pieces, y.contiguous(), group=self.group)
        out, offset = [], 0
        for s in self.output_sizes:
            p = s // self.world_size
            out += [piece[..., offset:offset + p] for piece in pieces]
            offset += p
        return torch.cat(out, dim=-1)


class RowParallelBlockFP8Linear(nn.Module):
    """This rank's input columns of a :class:`BlockFP8Linear`; outputs are all-reduced, the bias added once."""

    def __init__(self, layer: BlockFP8Linear, *, input_is_parallel: bool = False, group=None,
                 platform: Platform | None = None):
        super().__init__()
        self.group = group
        self.rank, self.world_size = _group_info(group)
        self.input_is_parallel = input_is_parallel
        w, s, self.start = row_shard(layer.weight.data, layer.weight_scale_inv.data, self.rank, self.world_size,
                                     layer.block_size, layer.name or "layer")
        self.local = BlockFP8Linear.from_fp8(w, s, None, config=layer.config, params_dtype=layer.params_dtype,
                                             name=f"{layer.name or 'layer'}[tp{self.rank}]", platform=platform)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.data.clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if not self.input_is_parallel:
            x = x[..., self.start:self.start + self.local.in_features]
        y = self.local(x)
        if self.world_size > 1:
            dist.all_reduce(y, op=dist.ReduceOp.SUM, group=self.group)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y
