"""Properties of the reference numerics: the source of truth every kernel is checked against."""

import math
import struct

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from blockfp8.quant import layouts
from blockfp8.quant import reference as ref
from blockfp8.testing import tolerances as tol
from tests.strategies import block_sizes, dims, distributions, make_tensor, seeds

FP8 = [torch.float8_e4m3fn, torch.float8_e4m3fnuz]


def expand_blocks(scale, shape, block):
    return scale.repeat_interleave(block[0], 0)[: shape[0]].repeat_interleave(block[1], 1)[:, : shape[1]]


def elementwise_bound(x, s_full, fp8_dtype):
    # one FP8 rounding: half an ulp relative for normals, half the subnormal spacing (in units of s) otherwise;
    # 1e-6 relative slack for the float32 division
    return (tol.fp8_roundtrip_rel_bound(fp8_dtype) + 1e-6) * x.abs() + s_full * tol.fp8_subnormal_step(fp8_dtype) / 2


@given(n=dims, k=dims, block=block_sizes, dist=distributions, seed=seeds, fmt=st.sampled_from(ref.SCALE_FMTS),
       fp8=st.sampled_from(FP8))
def test_weight_roundtrip_error_bound(n, k, block, dist, seed, fmt, fp8):
    w = make_tensor((n, k), dist, seed)
    q, s = ref.quantize_weight(w, block, fmt, fp8_dtype=fp8)
    assert q.shape == (n, k) and q.dtype == fp8
    assert s.shape == (math.ceil(n / block[0]), math.ceil(k / block[1])) and s.dtype == torch.float32
    s_full = expand_blocks(s, (n, k), block)
    err = (ref.dequantize_weight(q, s, block) - w).abs()
    bound = elementwise_bound(w, s_full, fp8)
    worst = (err - bound).max()
    assert worst <= 0, f"n={n} k={k} block={block} dist={dist} fmt={fmt} worst excess={float(worst)}"
    # every block's maximum stays inside the FP8 range (no saturation beyond max)
    assert float(q.to(torch.float32).abs().max()) <= ref.fp8_max(fp8)


@given(n=dims, k=dims, block=block_sizes, dist=distributions, seed=seeds)
def test_float32_scale_puts_block_max_on_fp8_max(n, k, block, dist, seed):
    w = make_tensor((n, k), dist, seed)
    q, s = ref.quantize_weight(w, block)
    amax = ref._block_view(w.abs(), *block).amax(dim=(1, 3))
    expected = amax.clamp(min=ref.WEIGHT_EPS) / 448.0
    assert torch.equal(s, expected)
    qmax = ref._block_view(q.to(torch.float32).abs(), *block).amax(dim=(1, 3))
    big = amax >= ref.WEIGHT_EPS
    assert torch.all(qmax[big] == 448.0), f"block max not on 448 for n={n} k={k} dist={dist}"


@given(n=dims, k=dims, block=block_sizes, dist=distributions, seed=seeds)
def test_ue8m0_scales_power_of_two_and_within_2x(n, k, block, dist, seed):
    w = make_tensor((n, k), dist, seed)
    _, s32 = ref.quantize_weight(w, block, "float32")
    q8, s8 = ref.quantize_weight(w, block, "ue8m0")
    assert bool(ref.is_power_of_two(s8).all())
    assert bool((s8 >= s32).all()) and bool((s8 < 2 * s32).all())
    # the block maximum lands in (224, 448]: the resolution UE8M0 gives away
    qmax = ref._block_view(q8.to(torch.float32).abs(), *block).amax(dim=(1, 3))
    big = ref._block_view(w.abs(), *block).amax(dim=(1, 3)) >= ref.WEIGHT_EPS
    assert bool((qmax[big] >= 224).all()) and bool((qmax[big] <= 448).all())


def ceil_pow2_oracle(s: float) -> float:
    """Independent oracle on the IEEE bit pattern via struct, with DeepGEMM's clamp."""
    bits = struct.unpack("<I", struct.pack("<f", s))[0]
    exp, mant = (bits >> 23) & 0xFF, bits & 0x7FFFFF
    e = min(max(exp + (mant != 0), 1), 254)
    return struct.unpack("<f", struct.pack("<I", e << 23))[0]


@given(st.floats(min_value=0.0, max_value=3.3999999521443642e+38, allow_nan=False, allow_infinity=False, width=32))
def test_ceil_to_ue8m0_bit_exact(s):
    got = float(ref.ceil_to_ue8m0(torch.tensor([s], dtype=torch.float32))[0])
    assert got == ceil_pow2_oracle(s)
    if 2.0**-126 <= s <= 2.0**127:
        assert s <= got < 2 * s


@pytest.mark.parametrize(
    "s, expected",
    [
        (1.0, 1.0), (2.0**-20, 2.0**-20), (2.0**127, 2.0**127), (1.5, 2.0), (0.75, 1.0),  # powers of two unchanged
        (2.0**-126, 2.0**-126), (2.0**-127, 2.0**-126), (1e-45, 2.0**-126), (0.0, 2.0**-126),  # subnormals, zero
        (3.0e38, 2.0**127), (2.0**127 * 1.0000001, 2.0**127),  # upper clamp
        (1.0000001, 2.0), (0.9999999, 1.0),
    ],
)
def test_ceil_to_ue8m0_edges(s, expected):
    assert float(ref.ceil_to_ue8m0(torch.tensor([s], dtype=torch.float32))[0]) == expected


def test_ceil_to_ue8m0_keeps_nonfinite_as_nan():
    out = ref.ceil_to_ue8m0(torch.tensor([float("nan"), float("inf"), 1.0]))
    assert torch.isnan(out[:2]).all() and out[2] == 1.0


@given(mn=st.integers(1, 37), g=st.integers(1, 13), experts=st.sampled_from([0, 1, 3]), seed=seeds)
def test_pack_unpack_roundtrip_and_layout(mn, g, experts, seed):
    gen = torch.Generator().manual_seed(seed)
    shape = (experts, mn, g) if experts else (mn, g)
    exps = torch.randint(1, 255, shape, generator=gen, dtype=torch.int32)
    s = (exps << 23).view(torch.float32)
    packed = layouts.pack_ue8m0(s)
    words = math.ceil(g / 4)
    assert packed.dtype == torch.int32 and packed.shape == (*shape[:-1], words)
    assert packed.stride()[-2:] == (1, layouts.tma_aligned(mn))
    assert torch.equal(layouts.unpack_ue8m0(packed, g), s)


def test_pack_byte_order_little_endian_along_k():
    s = torch.tensor([[1.0, 2.0, 0.5, 4.0, 8.0]])  # exponent bytes 127, 128, 126, 129 | 130
    packed = layouts.pack_ue8m0(s)
    word0 = 127 | (128 << 8) | (126 << 16) | (129 << 24)
    assert int(packed[0, 0]) == word0 - 2**32  # reinterpreted as signed int32
    assert int(packed[0, 1]) == 130  # missing groups pad with zero bytes


def test_pack_rejects_non_power_of_two():
    with pytest.raises(ref.QuantError, match="powers of two"):
        layouts.pack_ue8m0(torch.tensor([[1.5]]))


def test_e8m0_bytes_read_into_float32():
    b = torch.tensor([0, 1, 127, 128, 254, 255], dtype=torch.uint8)
    out = ref.e8m0_to_float32(b)
    assert out[:5].tolist() == [2.0**-127, 2.0**-126, 1.0, 2.0, 2.0**127] and math.isnan(out[5])
    if hasattr(torch, "float8_e8m0fnu"):
        assert torch.equal(ref.e8m0_to_float32(b[:5].view(torch.float8_e8m0fnu)), out[:5])
        assert torch.equal(ref.scales_to_float32(b[:5].view(torch.float8_e8m0fnu)), out[:5])


@given(n=dims, k=dims, block=block_sizes, dist=distributions, seed=seeds)
def test_requant_to_ue8m0(n, k, block, dist, seed):
    w = make_tensor((n, k), dist, seed)
    q, s = ref.quantize_weight(w, block)
    q2, s2 = ref.requant_to_ue8m0(q, s, block)
    assert bool(ref.is_power_of_two(s2).all())
    deq = ref.dequantize_weight(q, s, block)
    err = (ref.dequantize_weight(q2, s2, block) - deq).abs()
    assert float((err - elementwise_bound(deq, expand_blocks(s2, (n, k), block), q.dtype)).max()) <= 0
    # idempotent in value: a UE8M0-scaled weight loses nothing more
    q3, s3 = ref.requant_to_ue8m0(q2, s2, block)
    assert torch.equal(ref.dequantize_weight(q3, s3, block), ref.dequantize_weight(q2, s2, block))


@given(lead=st.sampled_from([(1,), (3,), (2, 5)]), k=dims, g=st.sampled_from([128, 64, 7]), dist=distributions,
       seed=seeds, fmt=st.sampled_from(ref.SCALE_FMTS))
def test_act_roundtrip_and_scale_shape(lead, k, g, dist, seed, fmt):
    x = make_tensor((*lead, k), dist, seed)
    q, s = ref.quantize_act(x, g, fmt)
    assert q.shape == x.shape and s.shape == (*lead, math.ceil(k / g))
    s_full = s.repeat_interleave(g, -1)[..., :k]
    err = (ref.dequantize_act(q, s, g) - x).abs()
    assert float((err - elementwise_bound(x, s_full, q.dtype)).max()) <= 0


def test_act_nan_inf_propagate_to_their_rows_only():
    x = torch.randn(4, 300)
    x[1, 5] = float("nan")
    x[2, 200] = float("inf")
    q, s = ref.quantize_act(x)  # no exception, no host-side check
    w = torch.randn(64, 300)
    wq, ws = ref.quantize_weight(w)
    out = ref.gemm_reference(q, s, wq, ws, out_dtype=torch.float32)
    assert torch.isnan(out[1]).all() and torch.isnan(out[2]).all()
    assert torch.isfinite(out[0]).all() and torch.isfinite(out[3]).all()
    for fmt in ref.SCALE_FMTS:  # UE8M0 must not turn a NaN scale into a finite power of two
        _, s8 = ref.quantize_act(x, scale_fmt=fmt)
        assert torch.isnan(s8[1, 0]) and not torch.isfinite(s8[2, 1])


@given(m=st.integers(1, 40), n=dims, k=dims, block=block_sizes, seed=seeds)
def test_gemm_reference_matches_float64(m, n, k, block, seed):
    x = make_tensor((m, k), "outlier_columns", seed)
    w = make_tensor((n, k), "gaussian", seed + 1)
    xq, xs = ref.quantize_act(x, block[1])
    wq, ws = ref.quantize_weight(w, block)
    out = ref.gemm_reference(xq, xs, wq, ws, block, out_dtype=torch.float32)
    x64 = ref.dequantize_act(xq, xs, block[1]).double()
    w64 = ref.dequantize_weight(wq, ws, block).double()
    expected = x64 @ w64.t()
    # float32 accumulation error grows with the sum of |products|, not with the (possibly cancelled) result
    scale = float((x64.abs() @ w64.abs().t()).max()) or 1.0
    diff = float((out.double() - expected).abs().max())
    assert diff <= tol.REFERENCE_GEMM_RTOL * scale, f"m={m} n={n} k={k} block={block} diff={diff}"


def test_gemm_reference_bias_and_out_dtype():
    x, w, b = torch.randn(3, 130), torch.randn(70, 130), torch.randn(70)
    xq, xs = ref.quantize_act(x)
    wq, ws = ref.quantize_weight(w)
    out = ref.gemm_reference(xq, xs, wq, ws, out_dtype=torch.bfloat16, bias=b)
    assert out.dtype == torch.bfloat16
    no_bias = ref.gemm_reference(xq, xs, wq, ws, out_dtype=torch.float32)
    assert torch.allclose(out.float(), (no_bias + b).bfloat16().float())


# ----------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ref.quantize_weight(torch.randint(0, 5, (4, 4))), "dtype torch.int64 cannot be quantized"),
        (lambda: ref.quantize_weight(torch.randn(4)), "expected a 2-D"),
        (lambda: ref.quantize_weight(torch.randn(2, 3, 4)), "expected a 2-D"),
        (lambda: ref.quantize_weight(torch.randn(4, 4), (0, 128)), "positive integers"),
        (lambda: ref.quantize_weight(torch.randn(4, 4), (-1, 128)), "positive integers"),
        (lambda: ref.quantize_weight(torch.randn(4, 4), (128,)), "positive integers"),
        (lambda: ref.quantize_weight(torch.randn(4, 4), (1.5, 128)), "positive integers"),
        (lambda: ref.quantize_weight(torch.randn(4, 4), scale_fmt="e4m3"), "valid values: float32, ue8m0"),
        (lambda: ref.quantize_weight(torch.randn(4, 4), fp8_dtype=torch.float16), "not a supported FP8 dtype"),
        (lambda: ref.quantize_weight([[1.0]]), "expected a torch.Tensor"),
        (lambda: ref.quantize_act(torch.randn(2, 8), 0), "group_size=0"),
        (lambda: ref.quantize_act(torch.tensor(1.0)), "at least 1 dimension"),
        (lambda: ref.dequantize_weight(torch.randn(4, 4), torch.ones(1, 1)), "expected an FP8 tensor"),
        (lambda: ref.dequantize_act(torch.zeros(2, 256, dtype=torch.float8_e4m3fn), torch.ones(2, 3)),
         r"expected \(2, 2\)"),
        (lambda: layouts.unpack_ue8m0(torch.zeros(3, 1, dtype=torch.int32), 9), "cannot hold k_groups=9"),
        (lambda: layouts.unpack_ue8m0(torch.zeros(3, 1, dtype=torch.int64), 4), "int32"),
        (lambda: ref.e8m0_to_float32(torch.ones(3)), "float8_e8m0fnu or uint8"),
    ],
)
def test_bad_input_raises_clear_error(call, match):
    with pytest.raises(ref.QuantError, match=match):
        call()


def test_scale_shape_mismatch_names_tensor_and_expected_shape():
    q = torch.zeros(300, 200, dtype=torch.float8_e4m3fn)
    with pytest.raises(ref.QuantError, match=r"layers\.3\.up_proj: scale shape \(2, 2\) does not match weight "
                                             r"\[300, 200\] with block size \[128, 128\]: expected \(3, 2\)"):
        ref.dequantize_weight(q, torch.ones(2, 2), name="layers.3.up_proj")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_weight_names_tensor_and_block(bad):
    w = torch.randn(300, 300)
    w[260, 130] = bad
    with pytest.raises(ref.QuantError, match=r"mlp\.down_proj: NaN or Inf in block \(2, 1\)"):
        ref.quantize_weight(w, name="mlp.down_proj")


def test_scale_is_correctly_rounded_division():
    # amax / 448 exactly rounded (float64 division rounded once to float32), not amax * (1/448)
    amax = torch.rand(10000, dtype=torch.float32) * 100 + 1e-3
    x = torch.zeros(10000, 128)
    x[:, 0] = amax
    _, s = ref.quantize_act(x)
    expected = (amax.double() / 448.0).float()
    assert torch.equal(s[:, 0], expected)
