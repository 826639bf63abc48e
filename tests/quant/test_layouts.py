"""Every scale layout and its inverse (quant.layouts), on ragged shapes: what the kernels read is exactly the
reference's scales."""

import pytest
import torch

from blockfp8.quant import layouts as L
from blockfp8.quant import reference as R


def _pow2_scales(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.exp2(torch.randint(-20, 10, shape, generator=g).float())


@pytest.mark.parametrize("m", [1, 3, 13, 67])
@pytest.mark.parametrize("groups", [1, 5, 9])
@pytest.mark.parametrize("layout", list(L.ScaleLayout))
def test_every_layout_round_trips(m, groups, layout):
    s = _pow2_scales((m, groups), seed=m * groups)
    laid = L.to_layout(s, layout)
    assert laid.shape[0] == m
    if layout is not L.ScaleLayout.ROW_MAJOR:
        assert laid.stride()[-2:] == (1, L.tma_aligned(m)), f"{layout}: must be MN-major and TMA-aligned"
    assert torch.equal(L.from_layout(laid, layout, groups), s)
    assert L.from_layout(laid, layout, groups).is_contiguous()


@pytest.mark.parametrize("e", [None, 3])
def test_mn_major_keeps_values_per_expert(e):
    shape = (7, 5) if e is None else (e, 7, 5)
    s = torch.rand(shape) + 0.1
    out = L.to_mn_major(s)
    assert torch.equal(out, s) and out.stride()[-2:] == (1, 8)


@pytest.mark.parametrize("n", [128, 200, 576])
@pytest.mark.parametrize("k", [512, 1100])
def test_per_row_packing_round_trip(n, k):
    _, w_s = R.quantize_weight(torch.randn(n, k), (128, 128), "ue8m0")
    packed = L.pack_ue8m0_per_row(w_s, n)
    assert packed.shape == (n, R.cdiv(R.cdiv(k, 128), 4)) and packed.dtype == torch.int32
    assert packed.stride() == (1, L.tma_aligned(n))
    assert torch.equal(L.unpack_ue8m0_per_row(packed, R.cdiv(k, 128)), w_s)
    rows = L.unpack_ue8m0(packed, R.cdiv(k, 128))
    assert torch.equal(rows[n - 1], w_s[(n - 1) // 128]), "row r carries its block's exponents"


def test_per_row_unpack_detects_disagreeing_rows():
    packed = L.pack_ue8m0(_pow2_scales((256, 2)))
    with pytest.raises(ValueError, match="disagree"):
        L.unpack_ue8m0_per_row(packed, 2)


def test_packing_refuses_non_power_of_two_scales():
    with pytest.raises(ValueError, match="powers of two"):
        L.pack_ue8m0(torch.tensor([[1.5]]))
    with pytest.raises(ValueError, match="powers of two"):
        L.to_layout(torch.tensor([[1.5]]), "packed_ue8m0")


@pytest.mark.parametrize("layout", list(L.ScaleLayout))
def test_empty_scales_match_the_layout(layout):
    e = L.empty_scales(5, 9, layout, "cpu")
    want = L.to_layout(_pow2_scales((5, 9)), layout)
    assert e.shape == want.shape and e.stride() == want.stride() and e.dtype == want.dtype


def test_bad_layout_names_the_valid_ones():
    with pytest.raises(ValueError, match="valid values: row_major, mn_major, packed_ue8m0"):
        L.to_layout(torch.ones(2, 2), "k_major")
