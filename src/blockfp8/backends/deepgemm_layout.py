"""DeepGEMM scale layouts and call sequence, in plain torch (no DeepGEMM needed to build or test them).

What ``deep_gemm.fp8_gemm_nt((a, sfa), (b, sfb), out)`` takes (REFERENCE.md §3; DeepGEMM's
``transform_sf_into_required_layout``):

* SM90 (Hopper), float32 scales: ``sfa`` = activation scales ``[M, ceil(K/128)]`` MN-major and TMA-aligned
  (strides ``(1, align(M, 4))``); ``sfb`` = the weight's ``[ceil(N/128), ceil(K/128)]`` block scales as they are.
* Family 100 (SM100/SM103), UE8M0 only: ``sfa`` = packed exponents ``[M, ceil(G/4)]`` int32 (4 bytes per word
  along K, byte g % 4), MN-major, TMA-aligned; ``sfb`` = the 128x128 block exponents broadcast to every row of N
  (granularity 1 x 128) and packed the same way: ``[N, ceil(G/4)]``.
* Shapes: bf16 output, ``N % 64 == 0``, ``K % 128 == 0``.
* Grouped MoE: ``m_grouped_fp8_gemm_nt_contiguous((a, sfa), (b, sfb), out, m_indices)`` with rows sorted by
  expert, each expert's run padded to the M alignment (``m_indices`` = expert per row, -1 on padding);
  ``m_grouped_fp8_gemm_nt_masked((a, sfa), (b, sfb), out, masked_m, expected_m)`` with ``a[E, M_max, K]``.

The ``unpack_*`` inverses let tests prove every conversion against ``quant.reference`` on CPU, and a fake
module proves the call sequence. The real run is for whoever has DeepGEMM installed.
"""

from __future__ import annotations

import torch

from blockfp8.quant.reference import QuantError, cdiv, pack_ue8m0, tma_aligned, unpack_ue8m0

DEEPGEMM_N_ALIGN = 64
DEEPGEMM_K_ALIGN = 128


def mn_major_tma_aligned(scale: torch.Tensor) -> torch.Tensor:
    """float32 ``[(E,) MN, G]`` -> the same values, MN-major with MN padded to 4 in storage."""
    if scale.dim() not in (2, 3):
        raise QuantError(f"scale: expected [MN, G] or [E, MN, G], got shape {tuple(scale.shape)}")
    squeeze = scale.dim() == 2
    s = scale.unsqueeze(0) if squeeze else scale
    b, mn, g = s.shape
    storage = torch.zeros((b, g, tma_aligned(mn)), dtype=torch.float32, device=s.device)
    storage[:, :, :mn] = s.transpose(1, 2).to(torch.float32)
    out = storage.transpose(1, 2)[:, :mn, :]
    return out[0] if squeeze else out


def sm90_act_scales(x_scale: torch.Tensor) -> torch.Tensor:
    return mn_major_tma_aligned(x_scale)


def sm90_weight_scales(w_scale: torch.Tensor) -> torch.Tensor:
    """SM90 takes the 128x128 block scales as they are (float32, contiguous)."""
    return w_scale.to(torch.float32).contiguous()


def sm100_act_scales(x_scale: torch.Tensor) -> torch.Tensor:
    """Power-of-two float32 ``[(E,) M, G]`` -> packed UE8M0 ``[(E,) M, ceil(G/4)]`` int32, MN-major."""
    return pack_ue8m0(x_scale)


def sm100_weight_scales(w_scale: torch.Tensor, n: int, block_n: int = 128) -> torch.Tensor:
    """Power-of-two block scales ``[(E,) ceil(N/bn), G]`` -> per-row packed UE8M0 ``[(E,) N, ceil(G/4)]``."""
    rows = w_scale.repeat_interleave(block_n, dim=-2)
    rows = rows[..., :n, :]
    return pack_ue8m0(rows)


def unpack_sm100_weight_scales(packed: torch.Tensor, k_groups: int, block_n: int = 128) -> torch.Tensor:
    """Inverse of ``sm100_weight_scales``: ``[(E,) ceil(N/bn), G]`` float32 (checks every row of a block agrees)."""
    rows = unpack_ue8m0(packed, k_groups)
    n = rows.shape[-2]
    blocks = rows[..., ::block_n, :]
    if not torch.equal(blocks.repeat_interleave(block_n, dim=-2)[..., :n, :], rows):
        raise QuantError("packed weight scales: rows of one 128-row block disagree")
    return blocks


def check_shape(n: int, k: int) -> tuple[bool, str]:
    if n % DEEPGEMM_N_ALIGN:
        return False, f"N={n} is not a multiple of {DEEPGEMM_N_ALIGN} (DeepGEMM fp8_gemm_nt)"
    if k % DEEPGEMM_K_ALIGN:
        return False, f"K={k} is not a multiple of {DEEPGEMM_K_ALIGN} (DeepGEMM fp8_gemm_nt)"
    return True, "ok"


def convert_weight(w_scale: torch.Tensor, n: int, family: int) -> torch.Tensor:
    """The weight scales DeepGEMM takes on this SM family (90: float32; 100: packed UE8M0, which must already be
    powers of two: the UE8M0 requant is the policy's decision, never done here)."""
    if family == 90:
        return sm90_weight_scales(w_scale)
    if family == 100:
        return sm100_weight_scales(w_scale, n)
    raise QuantError(f"DeepGEMM scale layout for SM family {family} is not known (90 or 100)")


def convert_act(x_scale: torch.Tensor, family: int) -> torch.Tensor:
    if family == 90:
        return sm90_act_scales(x_scale)
    if family == 100:
        return sm100_act_scales(x_scale)
    raise QuantError(f"DeepGEMM scale layout for SM family {family} is not known (90 or 100)")


def gemm(dg, x_q: torch.Tensor, sfa: torch.Tensor, w_q: torch.Tensor, sfb: torch.Tensor,
         out: torch.Tensor | None = None) -> torch.Tensor:
    """``out[M, N]`` (bf16) through ``dg.fp8_gemm_nt`` with scales already converted for this family."""
    m, n = x_q.shape[0], w_q.shape[0]
    ok, why = check_shape(n, x_q.shape[1])
    if not ok:
        raise QuantError(why)
    if out is None:
        out = torch.empty((m, n), dtype=torch.bfloat16, device=x_q.device)
    dg.fp8_gemm_nt((x_q, sfa), (w_q, sfb), out)
    return out


def contiguous_layout(topk_ids: torch.Tensor, num_experts: int, align: int):
    """For ``m_grouped_fp8_gemm_nt_contiguous``: (row -> routed pair id or -1, m_indices expert per row or -1).
    Each expert's rows are padded to ``align`` (DeepGEMM's ``get_mk_alignment_for_contiguous_layout()``)."""
    flat = topk_ids.reshape(-1).to(torch.int64)
    counts = torch.bincount(flat, minlength=num_experts)
    padded = (counts + align - 1) // align * align
    ends = torch.cumsum(padded, 0)
    starts = ends - padded
    order = torch.argsort(flat, stable=True)
    sorted_e = flat[order]
    rank = torch.arange(flat.numel(), device=flat.device) - (torch.cumsum(counts, 0) - counts)[sorted_e]
    total = int(ends[-1]) if num_experts else 0  # one host read: DeepGEMM takes a sized tensor
    pair_of_row = torch.full((total,), -1, dtype=torch.int64, device=flat.device)
    pair_of_row[starts[sorted_e] + rank] = order
    m_indices = torch.full((total,), -1, dtype=torch.int32, device=flat.device)
    for e in range(num_experts):  # small loop over experts on the index tensor only
        m_indices[int(starts[e]): int(starts[e] + counts[e])] = e
    return pair_of_row, m_indices


def grouped_contiguous(dg, a_q, sfa, w_q, sfb, m_indices, out=None):
    """``out[rows, N] = a_q @ w_q[m_indices[row]].T`` via ``dg.m_grouped_fp8_gemm_nt_contiguous``."""
    if out is None:
        out = torch.empty((a_q.shape[0], w_q.shape[1]), dtype=torch.bfloat16, device=a_q.device)
    dg.m_grouped_fp8_gemm_nt_contiguous((a_q, sfa), (w_q, sfb), out, m_indices)
    return out


def grouped_masked(dg, a_q, sfa, w_q, sfb, masked_m, expected_m: int, out=None):
    """``a_q[E, M_max, K]``: per expert, only the first ``masked_m[e]`` rows are computed."""
    if out is None:
        out = torch.empty((a_q.shape[0], a_q.shape[1], w_q.shape[1]), dtype=torch.bfloat16, device=a_q.device)
    dg.m_grouped_fp8_gemm_nt_masked((a_q, sfa), (w_q, sfb), out, masked_m, expected_m)
    return out


def k_groups(k: int, block_k: int = 128) -> int:
    return cdiv(k, block_k)
