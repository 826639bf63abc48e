"""Triton kernels of ``triton_gemm`` (imported lazily by it: importing blockfp8 never imports Triton).

See ``triton_gemm`` for what they compute and how they are launched.
"""

import triton
import triton.language as tl


@triton.jit
def _tile_ids(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    width = GROUP_M * num_pid_n
    group = pid // width
    first_m = group * GROUP_M
    size_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m
    return pid_m, pid_n

@triton.jit
def _epilogue(acc, out_ptr, bias_ptr, rm, rn, M, N, stride_om, stride_on, HAS_BIAS: tl.constexpr):
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    ptrs = out_ptr + rm[:, None].to(tl.int64) * stride_om + rn[None, :] * stride_on
    tl.store(ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _tile_scale(sa, bs_ptr, n0, N, g, stride_bsn, stride_bsk, SCALE_BN: tl.constexpr, COLS: tl.constexpr):
    """The promotion factor of K block ``g`` for the tile of ``COLS`` columns from ``n0``: the activation scale
    ``sa`` (per row) times the weight scale. Where the tile's columns share one weight-scale block (a tile never
    straddles one when ``SCALE_BN`` is a multiple of ``COLS``) that is one scalar, and the promotion is one FMA per
    element; else a per-column vector (a multiply more per element)."""
    if SCALE_BN % COLS == 0:
        sb = tl.load(bs_ptr + (n0 // SCALE_BN) * stride_bsn + g * stride_bsk, mask=n0 < N, other=0.0)
        return (sa * sb)[:, None]
    else:
        rn = n0 + tl.arange(0, COLS)
        sb = tl.load(bs_ptr + (rn // SCALE_BN) * stride_bsn + g * stride_bsk, mask=rn < N, other=0.0)
        return sa[:, None] * sb[None, :]


@triton.jit(do_not_specialize=["M"])
def _fp8_block_gemm_kernel(
    a_ptr, b_ptr, as_ptr, bs_ptr, out_ptr, bias_ptr, ws_ptr, cnt_ptr,
    M, N, K,
    stride_am, stride_ak, stride_bn, stride_bk,
    stride_asm, stride_ask, stride_bsn, stride_bsk,
    stride_om, stride_on,
    SCALE_BN: tl.constexpr, SCALE_BK: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = _tile_ids(pid, num_pid_m, num_pid_n, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N
    k_blocks = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(k_blocks, SPLIT_K)
    kb_start = pid_k * per_split
    kb_end = tl.minimum(kb_start + per_split, k_blocks)
    a_ptrs = a_ptr + rm[:, None].to(tl.int64) * stride_am + rk[None, :] * stride_ak
    b_ptrs = b_ptr + rn[None, :].to(tl.int64) * stride_bn + rk[:, None] * stride_bk
    as_ptrs = as_ptr + rm * stride_asm
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(kb_start, kb_end):
        k0 = kb * BLOCK_K
        k_ok = (k0 + rk) < K
        a = tl.load(a_ptrs + k0 * stride_ak, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs + k0 * stride_bk, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        sa = tl.load(as_ptrs + (k0 // SCALE_BK) * stride_ask, mask=m_ok, other=0.0)
        scale = _tile_scale(sa, bs_ptr, pid_n * BLOCK_N, N, k0 // SCALE_BK, stride_bsn, stride_bsk, SCALE_BN, BLOCK_N)
        acc += tl.dot(a, b) * scale
    if SPLIT_K == 1:
        _epilogue(acc, out_ptr, bias_ptr, rm, rn, M, N, stride_om, stride_on, HAS_BIAS)
    else:
        mask = m_ok[:, None] & n_ok[None, :]
        ws_tile = rm[:, None].to(tl.int64) * N + rn[None, :]
        tl.store(ws_ptr + pid_k * M * N + ws_tile, acc, mask=mask)  # launcher keeps SPLIT_K*M*N < 2^31
        tl.debug_barrier()  # every thread's partial is stored before the release below
        tile = pid_m * num_pid_n + pid_n
        arrived = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel")
        if arrived == SPLIT_K - 1:  # the last slice of this tile: sum all partials in a fixed order
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for s in range(SPLIT_K):
                total += tl.load(ws_ptr + s * M * N + ws_tile, mask=mask, other=0.0,
                                 cache_modifier=".cg")
            tl.atomic_xchg(cnt_ptr + tile, 0)  # ready for the next launch
            _epilogue(total, out_ptr, bias_ptr, rm, rn, M, N, stride_om, stride_on, HAS_BIAS)

@triton.jit(do_not_specialize=["M"])
def _fp8_block_gemm_tma_kernel(
    a_desc, b_desc, as_ptr, bs_ptr, out_ptr, bias_ptr,
    M, N, K,
    stride_asm, stride_ask, stride_bsn, stride_bsk,
    stride_om, stride_on,
    SCALE_BN: tl.constexpr, SCALE_BK: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, NUM_PROGS: tl.constexpr, NUM_STAGES: tl.constexpr, N_SPLIT: tl.constexpr,
):
    # N_SPLIT = 2 runs each tile as two MMAs of BLOCK_N / 2 columns (``b_desc`` has that block): fewer registers
    # hold a partial product.
    PART: tl.constexpr = BLOCK_N // N_SPLIT
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_tiles = num_pid_m * num_pid_n
    k_blocks = tl.cdiv(K, BLOCK_K)
    for tile in range(tl.program_id(0), num_tiles, NUM_PROGS):
        pid_m, pid_n = _tile_ids(tile, num_pid_m, num_pid_n, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        rm = off_m + tl.arange(0, BLOCK_M)
        rn = off_n + tl.arange(0, PART)
        m_ok = rm < M
        as_ptrs = as_ptr + rm * stride_asm
        acc0 = tl.zeros((BLOCK_M, PART), dtype=tl.float32)
        if N_SPLIT == 2:
            acc1 = tl.zeros((BLOCK_M, PART), dtype=tl.float32)
        for kb in tl.range(0, k_blocks, num_stages=NUM_STAGES):
            k0 = kb * BLOCK_K
            g = k0 // SCALE_BK
            a = a_desc.load([off_m, k0])
            sa = tl.load(as_ptrs + g * stride_ask, mask=m_ok, other=0.0)
            s0 = _tile_scale(sa, bs_ptr, off_n, N, g, stride_bsn, stride_bsk, SCALE_BN, PART)
            acc0 += tl.dot(a, b_desc.load([off_n, k0]).T) * s0
            if N_SPLIT == 2:
                s1 = _tile_scale(sa, bs_ptr, off_n + PART, N, g, stride_bsn, stride_bsk, SCALE_BN, PART)
                acc1 += tl.dot(a, b_desc.load([off_n + PART, k0]).T) * s1
        _epilogue(acc0, out_ptr, bias_ptr, rm, rn, M, N, stride_om, stride_on, HAS_BIAS)
        if N_SPLIT == 2:
            _epilogue(acc1, out_ptr, bias_ptr, rm, rn + PART, M, N, stride_om, stride_on, HAS_BIAS)
