"""Checkpoint-level numerics of one stored FP8 tensor (audit.numerics): known answers, the histogram tables
against the element-by-element computation, and the reference requantization."""

import math

import pytest
import torch

from blockfp8.audit import numerics as ck
from blockfp8.quant import metrics
from blockfp8.quant import reference as ref
from blockfp8.testing.synthetic import synthetic_weight


def _direct(q, s, block):
    """The UE8M0 requant error computed element by element with the reference functions."""
    n, k = q.shape
    deq = ref.dequantize_weight(q, s, block)
    s8 = ref.ceil_to_ue8m0(s)
    full = s8.repeat_interleave(block[0], 0)[:n].repeat_interleave(block[1], 1)[:, :k]
    fmax = ref.fp8_max(q.dtype)
    requant = (deq / full).clamp(-fmax, fmax).to(q.dtype).float() * full
    return metrics.rel_fro_error(deq, requant)


def test_pow2_scales_lose_exactly_nothing_with_either_method():
    q, s = ref.quantize_weight(synthetic_weight((300, 520), "pow2"))
    for method in ("histogram", "direct"):
        row = ck.audit_fp8_tensor("w", q, s, method=method)
        assert row.bits_lost == 0.0 and row.rel_err_ue8m0 == 0.0 and row.pow2_block_share == 1.0, method


@pytest.mark.parametrize("shape,block,fp8_dtype", [
    ((300, 520), (128, 128), torch.float8_e4m3fn),
    ((257, 130), (64, 128), torch.float8_e4m3fn),
    ((40, 2100), (16, 16), torch.float8_e4m3fn),  # 132 block columns: two packing passes
    ((300, 520), (128, 128), torch.float8_e4m3fnuz),
])
def test_histogram_tables_equal_the_elementwise_computation(shape, block, fp8_dtype):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    w[3, 5] = 60.0  # one outlier: a block whose other values drift toward subnormals
    q, s = ref.quantize_weight(w, block, fp8_dtype=fp8_dtype)
    row = ck.audit_fp8_tensor("w", q, s, block)
    assert row.rel_err_ue8m0 == pytest.approx(_direct(q, s, block), rel=1e-9), f"shape={shape} block={block}"
    # the element-by-element method (CUDA's default), in slabs smaller than the tensor
    sums = ck._sums_direct(q.view(torch.uint8), s, block, fp8_dtype, "w", rows_per_slab=2 * block[0])
    assert sums == pytest.approx(ck._sums_from_histogram(q.view(torch.uint8), s, block, fp8_dtype, "w"), rel=1e-5)
    direct = ck.audit_fp8_tensor("w", q, s, block, method="direct")
    assert direct.bits_lost == pytest.approx(row.bits_lost, rel=1e-5) and direct.bits_fp32 == pytest.approx(
        row.bits_fp32, rel=1e-6)
    # the histogram itself, against a direct count
    hist = ck._block_code_histogram(q.view(torch.uint8), block)
    bn, bk = block
    i, j = shape[0] // bn // 2, shape[1] // bk // 2
    direct = torch.bincount(q.view(torch.uint8)[i * bn:(i + 1) * bn, j * bk:(j + 1) * bk].reshape(-1).long(),
                            minlength=256)
    assert torch.equal(hist[i, j], direct)
    assert int(hist.sum()) == q.numel()


def test_histogram_methods_agree():
    q = ref.quantize_weight(torch.randn(1100, 2100))[0].view(torch.uint8)
    one = ck._block_code_histogram(q, (16, 16), workers=1)  # 132 block columns: two packing passes
    assert torch.equal(one, ck._block_code_histogram(q, (16, 16), workers=3))
    assert torch.equal(one, ck._block_code_histogram(q, (16, 16), method="flat"))


def test_same_scale_as_reference_requant_when_block_max_is_448():
    q, s = ref.quantize_weight(torch.randn(256, 384))  # float32 scales: every block maximum stored as 448
    q2, s2 = ref.requant_to_ue8m0(q, s)
    assert torch.equal(s2, ref.ceil_to_ue8m0(s))
    deq = ref.dequantize_weight(q, s)
    want = metrics.rel_fro_error(deq, ref.dequantize_weight(q2, s2))
    assert ck.audit_fp8_tensor("w", q, s).rel_err_ue8m0 == pytest.approx(want, rel=1e-9)


def test_noise_estimate_matches_the_real_first_rounding():
    # bits_fp32 estimates the checkpoint's own E4M3 rounding from the stored codes; compare with the truth
    w = torch.randn(512, 768, generator=torch.Generator().manual_seed(2))
    q, s = ref.quantize_weight(w)
    true_bits = metrics.snr_bits(w, ref.dequantize_weight(q, s))
    assert ck.audit_fp8_tensor("w", q, s).bits_fp32 == pytest.approx(true_bits, abs=0.1)


def test_all_zero_weight_gives_finite_numbers():
    q, s = ref.quantize_weight(torch.zeros(128, 128))
    row = ck.audit_fp8_tensor("zero", q, s)
    assert row.bits_lost == 0.0 and math.isfinite(row.bits_fp32) and math.isfinite(row.bits_ue8m0)
