"""Tensor parallel BlockFP8Linear: 2 ranks, gloo, CPU, via torch.multiprocessing.spawn; each rank's column- and
row-parallel output must equal the unsharded layer's. Plus the block-alignment rule (vLLM's), without ranks."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from blockfp8.config import BlockFP8Config
from blockfp8.nn import BlockFP8Linear
from blockfp8.nn.tp import (
    BlockPartitionError,
    ColumnParallelBlockFP8Linear,
    RowParallelBlockFP8Linear,
    column_shard,
    merge_column_weights,
    row_shard,
    validate_block_partition,
)
from blockfp8.quant import reference as ref
from blockfp8.testing import tolerances as tol

WORLD = 2


def _full_layer(n, k, seed, bias=True):
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) * 0.05)
        if bias:
            lin.bias.copy_(torch.randn(n, generator=g))
    return BlockFP8Linear.from_linear(lin, BlockFP8Config(), name=f"layer{n}x{k}")


def _close(got, want, what):
    err = (got - want).abs().max().item()
    assert err <= tol.TP_ATOL_FRACTION * want.abs().max().item(), f"rank {dist.get_rank()} {what}: diff={err}"


def _worker(rank, init_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        x = torch.randn(2, 5, 384, generator=torch.Generator().manual_seed(7))  # same input on every rank
        # column parallel (N=512 -> 256 rows per rank), gathered
        full = _full_layer(512, 384, 1)
        col = ColumnParallelBlockFP8Linear(full, gather_output=True)
        assert col.local.out_features == 256
        _close(col(x), full(x), "column")
        # merged column parallel: [gate 512 | up 256], each split over the ranks, gathered back in order
        merged = _full_layer(768, 384, 2, bias=False)
        mcol = ColumnParallelBlockFP8Linear(merged, output_sizes=[512, 256])
        _close(mcol(x), merged(x), "merged column")
        # row parallel (K=384 -> ... must be a multiple of 128 per rank: use K=512), input split here
        full_row = _full_layer(200, 512, 3)
        xr = torch.randn(3, 512, generator=torch.Generator().manual_seed(8))
        row = RowParallelBlockFP8Linear(full_row, input_is_parallel=False)
        assert row.local.in_features == 256
        _close(row(xr), full_row(xr), "row")
        # the usual pair: column (no gather) feeding row (input already parallel) = the two unsharded layers
        up, down = _full_layer(512, 384, 4), _full_layer(384, 512, 5)
        pair = RowParallelBlockFP8Linear(down, input_is_parallel=True)(
            ColumnParallelBlockFP8Linear(up, gather_output=False)(x))
        _close(pair, down(up(x)), "column->row")
        # a shard boundary inside a block is refused on every rank
        with pytest.raises(BlockPartitionError, match="column-parallel output partition 0 of 192 rows"):
            ColumnParallelBlockFP8Linear(_full_layer(384, 256, 6))
    finally:
        dist.destroy_process_group()


def test_two_ranks_gloo_equal_unsharded(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "rendezvous"),), nprocs=WORLD, join=True)


# ------------------------------------------------------------------------------------------------ no ranks


@pytest.mark.parametrize("kwargs,msg", [
    (dict(input_size=384, output_size=512, input_size_per_partition=192, output_partition_sizes=[512], tp_size=2),
     "row-parallel input partition of 192"),
    (dict(input_size=256, output_size=384, input_size_per_partition=256, output_partition_sizes=[192], tp_size=2),
     "column-parallel output partition 0 of 192 rows"),
    (dict(input_size=256, output_size=1024, input_size_per_partition=256, output_partition_sizes=[256, 256],
          tp_size=2), None),
    # merged, not split: the last part may be ragged (SmolLM2-like q 576 | k 192 | v 192 is refused: 576 % 128)
    (dict(input_size=576, output_size=960, input_size_per_partition=576, output_partition_sizes=[576, 192, 192],
          tp_size=1), "merged part 0 of 576 rows (only the last merged part may be ragged)"),
    (dict(input_size=576, output_size=832, input_size_per_partition=576, output_partition_sizes=[256, 384, 192],
          tp_size=1), None),
    (dict(input_size=576, output_size=832, input_size_per_partition=576, output_partition_sizes=[256, 192, 384],
          tp_size=1), "merged part 1 of 192 rows"),
])
def test_block_alignment_rule(kwargs, msg):
    if msg is None:
        validate_block_partition(block_size=(128, 128), name="blk", **kwargs)
    else:
        with pytest.raises(BlockPartitionError, match=msg.replace("(", "\\(").replace(")", "\\)")):
            validate_block_partition(block_size=(128, 128), name="blk", **kwargs)


def test_shards_own_whole_blocks():
    q, s = ref.quantize_weight(torch.randn(512, 768), (128, 128))
    w0, s0, ranges = column_shard(q, s, 1, 2, (128, 128), [256, 256])
    assert ranges == [(128, 256), (384, 512)]
    assert torch.equal(s0, torch.cat([s[1:2], s[3:4]]))
    assert torch.equal(w0.view(torch.uint8), torch.cat([q[128:256], q[384:512]]).view(torch.uint8))
    w1, s1, start = row_shard(q, s, 1, 3, (128, 128))
    assert start == 256 and torch.equal(s1, s[:, 2:4]) and w1.shape == (512, 256)
    with pytest.raises(BlockPartitionError, match="does not split evenly over 5 ranks"):
        row_shard(q, s, 0, 5)
    with pytest.raises(ValueError, match="rank=2 must be in"):
        column_shard(q, s, 2, 2)


def test_merge_allows_ragged_last_part_only():
    g, gs = ref.quantize_weight(torch.randn(256, 192))
    v, vs = ref.quantize_weight(torch.randn(200, 192))
    w, s = merge_column_weights([(g, gs), (v, vs)])
    assert w.shape == (456, 192) and s.shape == ref.weight_scale_shape((456, 192))
    # stacking the scale rows is exact: the merged layer equals the two layers side by side
    x = torch.randn(3, 192)
    merged = BlockFP8Linear.from_fp8(w, s, params_dtype=torch.float32)
    parts = [BlockFP8Linear.from_fp8(a, b, params_dtype=torch.float32) for a, b in ((g, gs), (v, vs))]
    assert torch.equal(merged(x), torch.cat([p(x) for p in parts], dim=-1))
    with pytest.raises(BlockPartitionError, match="merged part 0 of 200 rows"):
        merge_column_weights([(v, vs), (g, gs)])
