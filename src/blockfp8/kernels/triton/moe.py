"""Fused block-FP8 MoE in Triton: routed tokens sorted by expert, one grouped GEMM launch per projection.

``fused_moe(x, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids)`` computes, for each token t,
``sum_j topk_weights[t, j] * W2[e_j] @ silu_and_mul(W13[e_j] @ x[t])`` with ``W13[e] = [gate; up]`` stacked
``[E, 2I, H]`` and ``W2[e]`` ``[E, H, I]``, every weight block-FP8 (``[E, ceil(N/128), ceil(K/128)]`` float32
scales, UE8M0 powers of two allowed) and both activations quantized on the fly in 1 x 128 groups.

Steps, no host synchronisation: ``align_by_expert`` (sort the token*top_k pairs by expert, pad each expert's
run to BLOCK_M, all with tensor ops on the device) -> quantize x -> grouped GEMM 1 (A rows gathered by token) ->
SiLU-and-mul -> quantize -> grouped GEMM 2 (top-k weights applied in its epilogue) -> sum over the k slots.

The MoE layer reaches this through its backend (``backends.triton``), never by importing this module.
"""

from __future__ import annotations

import functools

import torch

from blockfp8.kernels.routing import expert_runs, padded_capacity, padded_starts
from blockfp8.kernels.triton import check_device
from blockfp8.quant.reference import QuantError, cdiv


@functools.cache
def _kernel():
    from blockfp8.kernels.triton import _moe_kernels as k

    return k._fp8_moe_gemm_kernel


def align_by_expert(topk_ids: torch.Tensor, num_experts: int, block_m: int):
    """(sorted_ids [cap], expert_ids [cap // block_m]) for ``topk_ids[T, k]``.

    ``sorted_ids`` lists pair ids ``t * k + j`` grouped by expert, each group padded to a multiple of block_m
    with the sentinel ``T * k``; ``expert_ids[b]`` is the expert of block b, -1 past the last block.
    ``cap = T*k + min(E, T*k)*(block_m - 1)`` rounded up to block_m: an upper bound, so no size is read back to the
    host.
    """
    runs = expert_runs(topk_ids, num_experts)
    n_pairs = runs.experts.numel()
    device = runs.experts.device
    starts, ends = padded_starts(runs.counts, block_m)
    cap = padded_capacity(n_pairs, num_experts, block_m)
    sorted_ids = torch.full((cap,), n_pairs, dtype=torch.int32, device=device)
    sorted_ids[starts[runs.experts[runs.order]] + runs.rank] = runs.order.to(torch.int32)
    block_start = torch.arange(0, cap, block_m, device=device)
    expert_ids = torch.searchsorted(ends, block_start, right=True)
    expert_ids = torch.where(expert_ids < num_experts, expert_ids, torch.full_like(expert_ids, -1)).to(torch.int32)
    return sorted_ids, expert_ids


def grouped_gemm(a_q, a_scale, w_q, w_scale, sorted_ids, expert_ids, num_valid: int, a_row_div: int,
                 out: torch.Tensor, topk_weights: torch.Tensor | None = None, block_size=(128, 128),
                 block_m: int = 64, block_n: int = 128, num_warps: int = 4, num_stages: int = 3) -> torch.Tensor:
    """``out[pair] = (a_q[pair // a_row_div] * a_scale) @ (w_q[e] * w_scale[e]).T`` for every routed pair,
    times ``topk_weights[pair]`` when given. ``w_q`` is ``[E, N, K]`` FP8, ``w_scale`` ``[E, N/bn, K/bk]``."""
    check_device(a_q.device)
    e, n, k = w_q.shape
    bn, bk = block_size
    if tuple(w_scale.shape) != (e, cdiv(n, bn), cdiv(k, bk)):
        raise QuantError(f"expert weight scale: shape {tuple(w_scale.shape)}, expected {(e, cdiv(n, bn), cdiv(k, bk))}")
    if a_q.shape[-1] != k:
        raise QuantError(f"moe activation: K={a_q.shape[-1]} does not match expert weight K={k}")
    grid = (expert_ids.numel() * cdiv(n, block_n),)
    tw = topk_weights.reshape(-1) if topk_weights is not None else out
    _kernel()[grid](
        a_q, w_q, a_scale, w_scale, out, sorted_ids, expert_ids, tw,
        num_valid, n, k,
        a_q.stride(0), a_q.stride(1), w_q.stride(0), w_q.stride(1), w_q.stride(2),
        a_scale.stride(0), a_scale.stride(1), w_scale.stride(0), w_scale.stride(1), w_scale.stride(2),
        out.stride(0), out.stride(1),
        A_ROW_DIV=a_row_div, MUL_WEIGHT=topk_weights is not None, SCALE_BN=bn, SCALE_BK=bk,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=bk, num_warps=num_warps, num_stages=num_stages,
    )
    return out


def default_block_m(num_pairs: int, num_experts: int) -> int:
    per_expert = num_pairs / max(1, num_experts)
    return 16 if per_expert <= 16 else (32 if per_expert <= 48 else 64)


def fused_moe(
    x: torch.Tensor,
    w13_q: torch.Tensor,
    w13_scale: torch.Tensor,
    w2_q: torch.Tensor,
    w2_scale: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    block_size=(128, 128),
    scale_fmt: str = "float32",
    out_dtype: torch.dtype | None = None,
    block_m: int | None = None,
) -> torch.Tensor:
    """MoE forward for ``x[T, H]`` (see the module docstring). ``scale_fmt`` is the activations' scale format
    (the decision's ``act_scale_fmt``). Returns ``[T, H]`` in ``out_dtype`` (default x's dtype)."""
    from blockfp8.kernels.triton import act_quant as triton_quant

    if x.dim() != 2:
        raise QuantError(f"moe input: expected [T, H], got shape {tuple(x.shape)}")
    t, h = x.shape
    e, two_i, h1 = w13_q.shape
    if h1 != h or w2_q.shape[0] != e or w2_q.shape[1] != h or 2 * w2_q.shape[2] != two_i:
        raise QuantError(f"moe weights: w13 {tuple(w13_q.shape)} and w2 {tuple(w2_q.shape)} do not fit hidden {h}")
    if topk_ids.shape != topk_weights.shape or topk_ids.shape[0] != t:
        raise QuantError(f"moe routing: topk_ids {tuple(topk_ids.shape)} / topk_weights {tuple(topk_weights.shape)}"
                         f" must both be [T={t}, top_k]")
    out_dtype = out_dtype or x.dtype
    top_k = topk_ids.shape[1]
    n_pairs = t * top_k
    bm = block_m or default_block_m(n_pairs, e)
    sorted_ids, expert_ids = align_by_expert(topk_ids, e, bm)
    bk = block_size[1]
    x_q, x_s = triton_quant.quantize_act(x, bk, scale_fmt)
    inter = torch.empty((n_pairs, two_i), dtype=torch.bfloat16, device=x.device)
    grouped_gemm(x_q, x_s, w13_q, w13_scale, sorted_ids, expert_ids, n_pairs, top_k, inter, None, block_size, bm)
    i = two_i // 2
    act = (torch.nn.functional.silu(inter[:, :i].float()) * inter[:, i:].float()).to(torch.bfloat16)
    a_q, a_s = triton_quant.quantize_act(act, bk, scale_fmt)
    out = torch.empty((n_pairs, h), dtype=torch.float32, device=x.device)
    grouped_gemm(a_q, a_s, w2_q, w2_scale, sorted_ids, expert_ids, n_pairs, 1, out, topk_weights.float(),
                 block_size, bm)
    return out.view(t, top_k, h).sum(dim=1).to(out_dtype)
