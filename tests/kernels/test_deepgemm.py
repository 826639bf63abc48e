"""DeepGEMM scale-layout conversions proven against quant.reference on CPU, and the call sequence through a fake
deep_gemm module that computes with the converted scales (so a wrong layout gives a wrong product)."""

import pytest
import torch

from blockfp8.backends import deepgemm_layout as L
from blockfp8.quant import reference as R
from blockfp8.testing.tolerances import gemm_atol


def _case(m, n, k, fmt, seed=0):
    g = torch.Generator().manual_seed(seed)
    w_q, w_s = R.quantize_weight(torch.randn(n, k, generator=g), (128, 128), fmt)
    x_q, x_s = R.quantize_act(torch.randn(m, k, generator=g) * 3, 128, fmt)
    return x_q, x_s, w_q, w_s


class FakeDeepGemm:
    """Records calls; computes what the real kernels compute from scales in the family's layout."""

    def __init__(self, family):
        self.family, self.calls = family, []

    def _scales(self, sfa, sfb, k, n):
        groups = R.cdiv(k, 128)
        if self.family == 100:
            assert sfa.dtype == torch.int32 and sfb.dtype == torch.int32
            assert sfa.stride(-2) == 1 and sfb.stride(-2) == 1, "packed scales must be MN-major"
            return R.unpack_ue8m0(sfa, groups), L.unpack_sm100_weight_scales(sfb, groups)
        assert sfa.dtype == torch.float32 and sfa.stride(-2) == 1, "SM90 activation scales must be MN-major"
        assert sfa.stride(-1) % 4 == 0, "SM90 activation scales must be TMA-aligned"
        return sfa, sfb

    def fp8_gemm_nt(self, a, b, out):
        (x_q, sfa), (w_q, sfb) = a, b
        self.calls.append(("fp8_gemm_nt", tuple(x_q.shape), tuple(w_q.shape)))
        xs, ws = self._scales(sfa, sfb, x_q.shape[1], w_q.shape[0])
        out.copy_(R.gemm_reference(x_q, xs, w_q, ws, (128, 128), out.dtype))

    def m_grouped_fp8_gemm_nt_contiguous(self, a, b, out, m_indices):
        (x_q, sfa), (w_q, sfb) = a, b
        self.calls.append(("contiguous", tuple(x_q.shape), tuple(w_q.shape)))
        xs_all, _ = self._scales(sfa, sfb[0], x_q.shape[1], w_q.shape[1])
        out.zero_()
        for e in range(w_q.shape[0]):
            rows = (m_indices == e).nonzero().flatten()
            if rows.numel():
                _, ws = self._scales(sfa, sfb[e], x_q.shape[1], w_q.shape[1])
                out[rows] = R.gemm_reference(x_q[rows], xs_all[rows], w_q[e], ws, (128, 128), out.dtype)


@pytest.mark.parametrize("m", [1, 3, 13, 67])
@pytest.mark.parametrize("mn_groups", [(1, 5), (5, 9)])
def test_sm90_act_scales_are_mn_major_tma_aligned(m, mn_groups):
    x_s = torch.rand(m, mn_groups[1]) + 0.1
    out = L.sm90_act_scales(x_s)
    assert out.shape == x_s.shape and out.stride() == (1, R.tma_aligned(m))
    assert torch.equal(out, x_s)


@pytest.mark.parametrize("n", [128, 200, 576])
@pytest.mark.parametrize("k", [512, 1100])
def test_sm100_weight_scales_round_trip(n, k):
    _, w_s = R.quantize_weight(torch.randn(n, k), (128, 128), "ue8m0")
    packed = L.sm100_weight_scales(w_s, n)
    assert packed.shape == (n, R.cdiv(R.cdiv(k, 128), 4)) and packed.dtype == torch.int32
    assert packed.stride() == (1, R.tma_aligned(n))
    assert torch.equal(L.unpack_sm100_weight_scales(packed, R.cdiv(k, 128)), w_s)
    # row r carries its block's exponents
    rows = R.unpack_ue8m0(packed, R.cdiv(k, 128))
    assert torch.equal(rows[n - 1], w_s[(n - 1) // 128])


def test_sm100_rejects_float32_scales():
    _, w_s = R.quantize_weight(torch.randn(128, 256), (128, 128), "float32")
    with pytest.raises(ValueError, match="powers of two"):
        L.convert_weight(w_s, 128, 100)


@pytest.mark.parametrize("family,fmt", [(90, "float32"), (90, "ue8m0"), (100, "ue8m0")])
@pytest.mark.parametrize("m", [1, 13, 67])
def test_fp8_gemm_nt_call_sequence(family, fmt, m):
    n, k = 192, 640
    x_q, x_s, w_q, w_s = _case(m, n, k, fmt, seed=m)
    dg = FakeDeepGemm(family)
    out = L.gemm(dg, x_q, L.convert_act(x_s, family), w_q, L.convert_weight(w_s, n, family))
    ref = R.gemm_reference(x_q, x_s, w_q, w_s, (128, 128), torch.float32)
    assert dg.calls == [("fp8_gemm_nt", (m, k), (n, k))]
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() <= gemm_atol(ref, torch.bfloat16)


def test_gemm_rejects_unaligned_shapes():
    x_q, x_s, w_q, w_s = _case(4, 200, 256, "float32")
    with pytest.raises(ValueError, match="multiple of 64"):
        L.gemm(FakeDeepGemm(90), x_q, L.convert_act(x_s, 90), w_q, L.convert_weight(w_s, 200, 90))


@pytest.mark.parametrize("family,fmt", [(90, "float32"), (100, "ue8m0")])
def test_grouped_contiguous_moe_sequence(family, fmt):
    e, t, top_k, n, k = 4, 9, 2, 128, 256
    g = torch.Generator().manual_seed(1)
    ids = torch.stack([torch.randperm(e, generator=g)[:top_k] for _ in range(t)])
    w = [R.quantize_weight(torch.randn(n, k, generator=g), (128, 128), fmt) for _ in range(e)]
    w_q = torch.stack([q for q, _ in w])
    w_s = torch.stack([s for _, s in w])
    x_q, x_s = R.quantize_act(torch.randn(t, k, generator=g), 128, fmt)
    pair_of_row, m_indices = L.contiguous_layout(ids, e, align=8)
    rows = pair_of_row.clamp(min=0) // top_k
    a_q, a_s = x_q[rows], x_s[rows]
    sfb = torch.stack([L.convert_weight(w_s[i], n, family) for i in range(e)])
    dg = FakeDeepGemm(family)
    out = L.grouped_contiguous(dg, a_q, L.convert_act(a_s, family), w_q, sfb, m_indices)
    assert dg.calls[0][0] == "contiguous"
    assert m_indices.numel() % 8 == 0 and int((m_indices >= 0).sum()) == t * top_k
    for row, pair in enumerate(pair_of_row.tolist()):
        if pair < 0:
            continue
        tok, slot = divmod(pair, top_k)
        ex = int(ids[tok, slot])
        assert int(m_indices[row]) == ex
        ref = R.gemm_reference(x_q[tok:tok + 1], x_s[tok:tok + 1], w_q[ex], w_s[ex], (128, 128), torch.float32)
        assert (out[row].float() - ref[0]).abs().max() <= gemm_atol(ref, torch.bfloat16)
