"""A whole block-FP8 MoE through DeepGEMM's grouped kernels, routed on the device with no host synchronisation.

``fused_moe`` computes what ``quant.reference.moe_reference`` computes (``sum_j w[t, j] * W2[e_j] @
silu_and_mul(W13[e_j] @ x[t])``, both activations quantized in 1 x 128 groups) with one of two DeepGEMM kernels:

* ``m_grouped_fp8_gemm_nt_contiguous`` (prefill): the routed rows sorted by expert into one ``[M, K]`` matrix,
  each expert's run padded to DeepGEMM's M alignment (its tile height), a per-row expert index (-1 on padding).
  ``M`` is an upper bound from the static shapes (``routing.padded_capacity``), so no size is read back.
* ``m_grouped_fp8_gemm_nt_masked`` (decode): fixed ``[E, max_m, K]`` buffers (``max_m``: T padded to whole tiles),
  expert e's rows first, plus a per-expert row count. Cheap when few tokens route; the contiguous form wins above
  ``masked_max_tokens`` tokens.

Both shapes depend only on ``T`` and the weights, so either form can be captured in a CUDA graph. Activations are
quantized once (``kernels.act_quant``, row-major float32 scales in the decision's format) and the FP8 rows and
their scales gathered into the kernel's order; DeepGEMM lays the scales out for its family itself (MN-major on
SM90; packed UE8M0 on SM100, where the weight scales arrive already packed per row from ``prepare_moe``).
"""

from __future__ import annotations

import math
from types import ModuleType

import torch

from blockfp8.kernels import act_quant
from blockfp8.kernels.routing import expert_runs, padded_capacity, padded_starts
from blockfp8.quant.reference import QuantError, cdiv

CONTIGUOUS_KERNEL = "m_grouped_fp8_gemm_nt_contiguous"
MASKED_KERNEL = "m_grouped_fp8_gemm_nt_masked"
GROUPED_KERNELS = (CONTIGUOUS_KERNEL, MASKED_KERNEL)
ALIGNMENT_QUERY = "get_mk_alignment_for_contiguous_layout"
# Up to this many tokens the masked kernel runs (decode), above it the contiguous one (prefill). On an H200
# (torch 2.11, DeepGEMM 2.6.1, CUDA graph, `blockfp8 bench moe`, benchmarks/results/nvidia_h200/deepgemm/moe.csv)
# masked beat contiguous at every count measured up to 512 (Qwen3-30B-A3B 1.36x vs 0.88x bf16 at 256, DeepSeek-V3
# 2.21x vs 1.47x); its slabs hold E x T rows, so the switch stays at 256 to bound that memory (DeepSeek-V3 shapes,
# by arithmetic: about 2 GB of slabs at 256 tokens).
MASKED_MAX_TOKENS = 256
GROUP = 128  # DeepGEMM's 1 x 128 activation groups and 128 x 128 weight blocks


def kernel_for(tokens: int, masked_max_tokens: int = MASKED_MAX_TOKENS) -> str:
    """The grouped kernel that runs a call of ``tokens`` tokens."""
    return MASKED_KERNEL if tokens <= masked_max_tokens else CONTIGUOUS_KERNEL


def contiguous_rows(topk_ids: torch.Tensor, num_experts: int, align: int):
    """(token of each row [M], expert of each row [M] int32 with -1 on padding, row of each pair [T*k]) for the
    contiguous layout: expert runs in order, each padded to ``align`` rows."""
    runs = expert_runs(topk_ids, num_experts)
    n_pairs, top_k = runs.experts.numel(), topk_ids.shape[1]
    cap = padded_capacity(n_pairs, num_experts, align)
    starts, _ = padded_starts(runs.counts, align)
    sorted_experts = runs.experts[runs.order]
    rows = starts[sorted_experts] + runs.rank
    pair_row = torch.empty_like(rows)
    pair_row[runs.order] = rows
    m_indices = torch.full((cap,), -1, dtype=torch.int32, device=rows.device)
    m_indices[rows] = sorted_experts.to(torch.int32)
    token = torch.zeros(cap, dtype=torch.int64, device=rows.device)  # padding rows read token 0: never used
    token[rows] = runs.order // top_k
    return token, m_indices, pair_row


def masked_rows(topk_ids: torch.Tensor, num_experts: int, max_m: int):
    """(row of each sorted pair in the flattened ``[E * max_m]`` buffer, token of each sorted pair, row of each
    pair [T*k], rows per expert [E] int32) for the masked layout."""
    runs = expert_runs(topk_ids, num_experts)
    # a token picks an expert at most once, so no expert gets more than T rows; checked on the device
    torch._assert_async((runs.counts <= max_m).all(), "moe routing: an expert appears twice in one token's top-k")
    rows = runs.experts[runs.order] * max_m + runs.rank
    pair_row = torch.empty_like(rows)
    pair_row[runs.order] = rows
    return rows, runs.order // topk_ids.shape[1], pair_row, runs.counts.to(torch.int32)


def silu_and_mul(inter: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` of ``[..., 2I]`` (gate first) in float32, rounded to bf16 like the reference."""
    i = inter.shape[-1] // 2
    return (torch.nn.functional.silu(inter[..., :i].float()) * inter[..., i:].float()).to(torch.bfloat16)


def _quantize(x: torch.Tensor, scale_fmt: str, fused: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return act_quant.quantize_act(x, GROUP, scale_fmt, "row_major", fused=fused)


def _combine(out_rows: torch.Tensor, pair_row: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
    t, k = topk_weights.shape
    picked = out_rows.reshape(-1, out_rows.shape[-1])[pair_row].view(t, k, -1).float()
    return (picked * topk_weights.float().unsqueeze(-1)).sum(dim=1)


def moe_contiguous(module: ModuleType, x, w13, s13, w2, s2, topk_weights, topk_ids, scale_fmt: str, align: int,
                   fused_quant: bool) -> torch.Tensor:
    e, two_i, h = w13.shape
    token, m_indices, pair_row = contiguous_rows(topk_ids, e, align)
    x_q, x_s = _quantize(x, scale_fmt, fused_quant)
    a, a_s = x_q.view(torch.uint8)[token].view(x_q.dtype), x_s[token]
    inter = torch.empty((token.numel(), two_i), dtype=torch.bfloat16, device=x.device)
    getattr(module, CONTIGUOUS_KERNEL)((a, a_s), (w13, s13), inter, m_indices)
    a2, a2_s = _quantize(silu_and_mul(inter), scale_fmt, fused_quant)
    out = torch.empty((token.numel(), h), dtype=torch.bfloat16, device=x.device)
    getattr(module, CONTIGUOUS_KERNEL)((a2, a2_s), (w2, s2), out, m_indices)
    return _combine(out, pair_row, topk_weights)


def masked_rows_per_expert(tokens: int, align_m: int) -> int:
    """Rows of each expert's slab. DeepGEMM addresses the masked operands as one ``[E * max_m, K]`` matrix and
    writes whole tiles (64 or 128 rows on SM90, its M alignment on SM100), so a slab shorter than a tile would let
    one expert's tile overwrite the next expert's rows: slabs are padded to a multiple of every tile height."""
    step = math.lcm(align_m, 128)
    return cdiv(tokens, step) * step


def moe_masked(module: ModuleType, x, w13, s13, w2, s2, topk_weights, topk_ids, scale_fmt: str, align_m: int,
               fused_quant: bool) -> torch.Tensor:
    e, two_i, h = w13.shape
    t, top_k = topk_ids.shape
    max_m = masked_rows_per_expert(t, align_m)
    rows, token, pair_row, masked_m = masked_rows(topk_ids, e, max_m)
    expected_m = max(1, cdiv(t * top_k, e))  # rows per expert on average: DeepGEMM's tile heuristic
    x_q, x_s = _quantize(x, scale_fmt, fused_quant)
    a, a_s = _scatter_rows(x_q.view(torch.uint8)[token], x_s[token], rows, e * max_m)
    inter = torch.empty((e, max_m, two_i), dtype=torch.bfloat16, device=x.device)
    getattr(module, MASKED_KERNEL)((a.view(x_q.dtype).view(e, max_m, h), a_s.view(e, max_m, -1)), (w13, s13),
                                   inter, masked_m, expected_m)
    # SiLU-and-mul and quantization on the routed rows only (the slabs are mostly padding at decode)
    a2_q, a2_s = _quantize(silu_and_mul(inter.view(e * max_m, two_i)[rows]), scale_fmt, fused_quant)
    a2, a2_s = _scatter_rows(a2_q.view(torch.uint8), a2_s, rows, e * max_m)
    out = torch.empty((e, max_m, h), dtype=torch.bfloat16, device=x.device)
    getattr(module, MASKED_KERNEL)((a2.view(a2_q.dtype).view(e, max_m, -1), a2_s.view(e, max_m, -1)), (w2, s2),
                                   out, masked_m, expected_m)
    return _combine(out, pair_row, topk_weights)


def _scatter_rows(q: torch.Tensor, scale: torch.Tensor, rows: torch.Tensor, total: int):
    """FP8 rows (as bytes) and their scales placed at ``rows`` of ``[total, K]`` buffers. Rows no pair uses are
    computed by partly filled tiles and then ignored: unit scales keep them valid in either scale format."""
    buf = torch.empty((total, q.shape[1]), dtype=torch.uint8, device=q.device)
    buf[rows] = q
    buf_s = torch.ones((total, scale.shape[1]), dtype=torch.float32, device=q.device)
    buf_s[rows] = scale
    return buf, buf_s


def fused_moe(module: ModuleType, x: torch.Tensor, w13: torch.Tensor, w13_scale: torch.Tensor, w2: torch.Tensor,
              w2_scale: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor, *, scale_fmt: str,
              align_m: int, masked_max_tokens: int = MASKED_MAX_TOKENS, fused_quant: bool = False) -> torch.Tensor:
    """MoE forward for ``x [T, H]`` -> float32 ``[T, H]`` with weights prepared by the DeepGEMM backend
    (``w13 [E, 2I, H]`` / ``w2 [E, H, I]`` FP8, scales in its family's weight layout)."""
    if x.dim() != 2 or w13.dim() != 3 or w2.dim() != 3 or w13.shape[2] != x.shape[1] or w2.shape[1] != x.shape[1] \
            or 2 * w2.shape[2] != w13.shape[1] or w2.shape[0] != w13.shape[0]:
        raise QuantError(f"deepgemm moe: x {tuple(x.shape)}, w13 {tuple(w13.shape)}, w2 {tuple(w2.shape)} do not fit "
                         "[T, H], [E, 2I, H], [E, H, I]")
    if topk_ids.shape != topk_weights.shape or topk_ids.shape[0] != x.shape[0]:
        raise QuantError(f"deepgemm moe: topk_ids {tuple(topk_ids.shape)} / topk_weights "
                         f"{tuple(topk_weights.shape)} must both be [T={x.shape[0]}, top_k]")
    if x.shape[0] == 0:
        return x.new_zeros(x.shape, dtype=torch.float32)
    x = x.to(torch.bfloat16)
    if kernel_for(x.shape[0], masked_max_tokens) == MASKED_KERNEL:
        return moe_masked(module, x, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids, scale_fmt, align_m,
                          fused_quant)
    return moe_contiguous(module, x, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids, scale_fmt, align_m,
                          fused_quant)
