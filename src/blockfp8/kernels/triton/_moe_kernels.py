"""Triton kernel of ``triton_moe`` (imported lazily by it: importing blockfp8 never imports Triton)."""

import triton
import triton.language as tl


@triton.jit(do_not_specialize=["num_valid"])
def _fp8_moe_gemm_kernel(
    a_ptr, b_ptr, as_ptr, bs_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr, topk_w_ptr,
    num_valid, N, K,
    stride_am, stride_ak, stride_be, stride_bn, stride_bk,
    stride_asm, stride_ask, stride_bse, stride_bsn, stride_bsk,
    stride_om, stride_on,
    A_ROW_DIV: tl.constexpr, MUL_WEIGHT: tl.constexpr,
    SCALE_BN: tl.constexpr, SCALE_BK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One (block of BLOCK_M routed rows of one expert) x (BLOCK_N outputs) tile.

    ``sorted_ids`` holds routed-pair ids (token * top_k + slot) grouped by expert, each expert's run padded to
    BLOCK_M with ``num_valid`` (a sentinel); ``expert_ids[b]`` is block b's expert (-1: nothing to do).
    A row = pair id // A_ROW_DIV (top_k for the first GEMM: tokens are shared by their k experts).
    """
    pid = tl.program_id(0)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m = pid // num_pid_n
    pid_n = pid % num_pid_n
    expert = tl.load(expert_ids_ptr + pid_m)
    if expert < 0:
        return
    offs = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(sorted_ids_ptr + offs)
    row_ok = pair < num_valid
    a_row = pair // A_ROW_DIV
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    rk = tl.arange(0, BLOCK_K)
    e64 = expert.to(tl.int64)
    a_ptrs = a_ptr + a_row[:, None].to(tl.int64) * stride_am + rk[None, :] * stride_ak
    b_ptrs = b_ptr + e64 * stride_be + rn[None, :].to(tl.int64) * stride_bn + rk[:, None] * stride_bk
    as_ptrs = as_ptr + a_row.to(tl.int64) * stride_asm
    bs_ptrs = bs_ptr + e64 * stride_bse + (rn // SCALE_BN) * stride_bsn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = (k0 + rk) < K
        a = tl.load(a_ptrs + k0 * stride_ak, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs + k0 * stride_bk, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        sa = tl.load(as_ptrs + (k0 // SCALE_BK) * stride_ask, mask=row_ok, other=0.0)
        sb = tl.load(bs_ptrs + (k0 // SCALE_BK) * stride_bsk, mask=n_ok, other=0.0)
        acc += tl.dot(a, b) * (sa[:, None] * sb[None, :])
    if MUL_WEIGHT:
        w = tl.load(topk_w_ptr + pair, mask=row_ok, other=0.0).to(tl.float32)
        acc = acc * w[:, None]
    out_ptrs = out_ptr + pair[:, None].to(tl.int64) * stride_om + rn[None, :] * stride_on
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])
