"""A stand-in for ``deep_gemm`` that computes what the real kernels compute, from scales in the layout the real
library accepts for the family (SM90 or SM100), and records every call. A wrong layout, routing or scale gives a
wrong product, so CPU tests prove the DeepGEMM paths that ship; GPU tests run the real library."""

from __future__ import annotations

import torch

from blockfp8.quant import layouts as L
from blockfp8.quant import reference as R

ALIGN = 128  # DeepGEMM's M alignment for the contiguous layout on SM90 (its tile height)


class ComputingDeepGemm:
    def __init__(self, family: int):
        self.family, self.calls = family, []

    def get_mk_alignment_for_contiguous_layout(self) -> int:
        return ALIGN

    # ---------------------------------------------------------------- scales as the kernels read them
    def _act_scales(self, sfa: torch.Tensor, k: int) -> torch.Tensor:
        groups = R.cdiv(k, 128)
        if sfa.dtype == torch.int32:
            assert self.family == 100, "packed activation scales exist only on SM100"
            assert sfa.stride(-2) == 1, "packed scales must be MN-major"
            return L.unpack_ue8m0(sfa, groups)
        assert sfa.dtype == torch.float32 and sfa.shape[-1] == groups
        if self.family == 100:  # the library packs float32 activation scales itself: they must be powers of two
            seen = sfa[torch.isfinite(sfa)]  # rows no token uses hold whatever the buffer held
            assert bool((seen == R.e8m0_to_float32(R.ue8m0_exponent(seen))).all()), "SM100 takes UE8M0 only"
        return sfa.contiguous()

    def _weight_scales(self, sfb: torch.Tensor, k: int) -> torch.Tensor:
        if self.family == 100:
            assert sfb.dtype == torch.int32 and sfb.stride(-2) == 1, "SM100 weight scales: packed per row"
            return L.unpack_ue8m0_per_row(sfb, R.cdiv(k, 128))
        assert sfb.dtype == torch.float32 and sfb.is_contiguous(), "SM90 weight scales: float32 blocks"
        return sfb

    # ---------------------------------------------------------------- kernels
    def fp8_gemm_nt(self, a, b, out):
        (x_q, sfa), (w_q, sfb) = a, b
        self.calls.append(("fp8_gemm_nt", tuple(x_q.shape), tuple(w_q.shape)))
        if self.family == 90:
            assert sfa.dtype == torch.float32 and sfa.stride(-2) == 1, "SM90 activation scales must be MN-major"
            assert sfa.stride(-1) % 4 == 0, "SM90 activation scales must be TMA-aligned"
        k = x_q.shape[1]
        xs, ws = self._act_scales(sfa, k), self._weight_scales(sfb, k)
        out.copy_(R.gemm_reference(x_q, xs, w_q, ws, (128, 128), out.dtype))

    def m_grouped_fp8_gemm_nt_contiguous(self, a, b, out, m_indices):
        (x_q, sfa), (w_q, sfb) = a, b
        self.calls.append(("m_grouped_fp8_gemm_nt_contiguous", tuple(x_q.shape), tuple(w_q.shape)))
        assert m_indices.dtype == torch.int32 and m_indices.shape == (x_q.shape[0],)
        assert x_q.shape[0] % ALIGN == 0, "the contiguous M must be a whole number of tiles"
        k = x_q.shape[1]
        xs, ws = self._act_scales(sfa, k), self._weight_scales(sfb, k)
        for start in range(0, x_q.shape[0], ALIGN):
            tile = m_indices[start:start + ALIGN]
            e = int(tile[0])
            if e < 0:  # the kernel skips a tile whose first row is padding: nothing of it may be real
                assert bool((tile < 0).all()), f"tile at row {start} starts with padding but holds rows"
                continue
            real = tile >= 0
            assert bool((tile[real] == e).all()), f"tile at row {start} mixes experts"
            assert not bool(real[int(real.sum()):].any()), f"tile at row {start}: padding before real rows"
            rows = slice(start, start + ALIGN)
            out[rows] = R.gemm_reference(x_q[rows], xs[rows], w_q[e], ws[e], (128, 128), out.dtype)

    def m_grouped_fp8_gemm_nt_masked(self, a, b, out, masked_m, expected_m):
        (x_q, sfa), (w_q, sfb) = a, b
        self.calls.append(("m_grouped_fp8_gemm_nt_masked", tuple(x_q.shape), tuple(w_q.shape)))
        assert masked_m.dtype == torch.int32 and masked_m.shape == (x_q.shape[0],) and expected_m > 0
        # the kernel addresses [E * max_m, K] as one matrix and stores whole 64- or 128-row tiles: a shorter slab
        # would let expert e's tile overwrite expert e + 1's rows
        assert x_q.shape[1] % 128 == 0, f"masked slabs of {x_q.shape[1]} rows are not whole tiles"
        k = x_q.shape[2]
        xs, ws = self._act_scales(sfa, k), self._weight_scales(sfb, k)
        for e in range(x_q.shape[0]):
            m = int(masked_m[e])
            assert m <= x_q.shape[1]
            if m:
                out[e, :m] = R.gemm_reference(x_q[e, :m], xs[e, :m], w_q[e], ws[e], (128, 128), out.dtype)
