"""Triton quantizer and block-FP8 GEMM vs quant.reference: ragged shapes, both scale formats, every layout,
NaN rows, poisoned outputs. On CPU they run in Triton's interpreter (small shapes); `gpu` tests on a GPU."""

import os

import pytest
import torch

if not torch.cuda.is_available():  # the interpreter is chosen process-wide, before Triton builds anything
    os.environ.setdefault("TRITON_INTERPRET", "1")

from blockfp8.quant import layouts
from blockfp8.quant import reference as R
from blockfp8.testing.tolerances import gemm_atol

triton = pytest.importorskip("triton")

from blockfp8.kernels.triton import act_quant as triton_quant  # noqa: E402
from blockfp8.kernels.triton import gemm as triton_gemm  # noqa: E402

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
RAGGED_M = (1, 3, 13, 67, 199)


def _skip_cpu_on_gpu_box(device):
    if device == "cpu" and torch.cuda.is_available():
        pytest.skip("interpreter tests run on CPU-only machines (TRITON_INTERPRET is process-wide)")


def _same_fp8(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical, except that NaN may carry either sign."""
    nan_a, nan_b = torch.isnan(a.float()), torch.isnan(b.float())
    return torch.equal(nan_a, nan_b) and torch.equal(a.view(torch.uint8)[~nan_a], b.view(torch.uint8)[~nan_b])


def _same_scale(a: torch.Tensor, b: torch.Tensor) -> bool:
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    return torch.equal(nan_a, nan_b) and torch.equal(a[~nan_a], b[~nan_b])


def _activation(m, k, device, seed, nan_row=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * torch.exp(torch.randn(m, 1, generator=g) * 3)
    x[:, :: max(1, k // 7)] *= 40  # outlier columns
    if nan_row and m > 2:
        x[m // 2, k // 3] = float("nan")
        x[m - 1, k - 1] = float("inf")
    return x.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", ["float32", "ue8m0"])
@pytest.mark.parametrize("m", RAGGED_M)
@pytest.mark.parametrize("k", [200, 1000])
def test_quantize_act_bitwise_row_major(device, fmt, m, k):
    _skip_cpu_on_gpu_box(device)
    x = _activation(m, k, device, seed=m * 31 + k)
    q, s = triton_quant.quantize_act(x, 128, fmt)
    qr, sr = R.quantize_act(x.cpu(), 128, fmt)
    assert _same_fp8(q.cpu(), qr), f"q differs: fmt={fmt} M={m} K={k}"
    assert _same_scale(s.cpu(), sr), f"scale differs: fmt={fmt} M={m} K={k}"
    if m > 2:
        assert torch.isnan(s[m // 2, (k // 3) // 128]).item(), "a NaN element must make its group's scale NaN"


def _hard_quotients(seed: int) -> torch.Tensor:
    """Rows whose quotients x / scale sit where a cheaper division would round differently: exact E4M3 ties and
    their float32 neighbours, signed zeros, values far below the group's amax (FP8 subnormals and underflow), and
    random float32 bit patterns; 128-wide groups with amax 448 (scale 1), 448 * 2^k and arbitrary."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.arange(-448 * 16, 448 * 16 + 1, dtype=torch.float32) / 16  # multiples of 1/16: many E4M3 ties
    ties = grid[torch.randint(0, grid.numel(), (4096,), generator=g)]
    near = torch.nextafter(ties, ties + torch.sign(torch.randn(4096, generator=g)))
    bits = torch.randint(0, 2**31 - 1, (4096,), generator=g, dtype=torch.int32).view(torch.float32)
    bits = torch.where(bits.isfinite() & (bits.abs() < 1e30), bits, 1.0) * torch.sign(torch.randn(4096, generator=g))
    tiny = torch.randn(4096, generator=g) * 1e-3
    x = torch.cat([ties, near, bits, tiny, torch.tensor([0.0, -0.0] * 64)]).reshape(-1, 128)
    x[::3, 0] = 448.0 * 2.0 ** torch.randint(-20, 20, (x[::3].shape[0],), generator=g).float()  # power-of-two amax
    return x[torch.randperm(x.shape[0], generator=g)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", ["float32", "ue8m0"])
def test_quantize_act_bitwise_hard_quotients(device, fmt):
    """The quantizer divides by one reciprocal per row and a Newton step: the bits must still be the reference's
    correctly rounded x / scale (float32 inputs, so no bf16 rounding hides a difference)."""
    _skip_cpu_on_gpu_box(device)
    x = _hard_quotients(seed=11)
    q, s = triton_quant.quantize_act(x.to(device), 128, fmt)
    qr, sr = R.quantize_act(x, 128, fmt)
    assert _same_scale(s.cpu(), sr)
    assert _same_fp8(q.cpu(), qr), f"{int((q.cpu().view(torch.uint8) != qr.view(torch.uint8)).sum())} bytes differ"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout,fmt", [("mn_major", "float32"), ("mn_major", "ue8m0"), ("packed_ue8m0", "ue8m0")])
@pytest.mark.parametrize("m", [1, 13, 67])
@pytest.mark.parametrize("pad_k", [1, 64, 128])
def test_quantize_act_layouts(device, layout, fmt, m, pad_k):
    _skip_cpu_on_gpu_box(device)
    k = 1100  # 9 groups: packing leaves a partial last word
    width = -(-k // pad_k) * pad_k
    x = _activation(m, k, device, seed=m, nan_row=False).to(torch.bfloat16)
    q, s = triton_quant.quantize_act(x, 128, fmt, layout, pad_m=4, pad_k=pad_k)
    qr, sr = R.quantize_act(x.cpu(), 128, fmt)
    m_pad = -(-m // 4) * 4
    assert q.shape == (m_pad, width) and s.shape[0] == m_pad and s.stride(0) == 1 and s.stride(1) == m_pad
    assert _same_fp8(q[:m, :k].cpu(), qr)
    assert torch.count_nonzero(q[m:].float()) == 0, "padding rows must be zero"
    assert torch.count_nonzero(q[:, k:].float()) == 0, "padding columns must be zero"
    if layout == "packed_ue8m0":
        assert s.dtype == torch.int32 and s.shape[1] == 3
        assert torch.equal(s[:m].cpu(), layouts.pack_ue8m0(sr)), f"packed words differ from pack_ue8m0 (M={m})"
    else:
        assert _same_scale(s[:m].cpu(), sr)


def test_quantize_act_rejects_bad_input():
    with pytest.raises(ValueError, match="packed_ue8m0"):
        triton_quant.quantize_act(torch.randn(2, 128), 128, "float32", "packed_ue8m0")
    with pytest.raises(ValueError, match="layout"):
        triton_quant.quantize_act(torch.randn(2, 128), 128, "float32", "k_major")
    with pytest.raises(ValueError, match="dtype"):
        triton_quant.quantize_act(torch.randint(0, 3, (2, 128)), 128)


CFG = {"kernel": "ptr", "BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 128, "SPLIT_K": 1, "GROUP_M": 4, "num_warps": 4,
       "num_stages": 2}
CONFIGS = {
    "plain": CFG,
    "splitk3": {**CFG, "SPLIT_K": 3},
    "bm32_splitk2": {**CFG, "BLOCK_M": 32, "BLOCK_N": 64, "SPLIT_K": 2},
    "tma": {**CFG, "kernel": "tma", "BLOCK_M": 32, "BLOCK_N": 64, "persistent": True},
    "tma_split2_occ3": {**CFG, "kernel": "tma", "BLOCK_M": 16, "BLOCK_N": 128, "N_SPLIT": 2, "occupancy": 3,
                        "maxnreg": 168},
    "tma_one_per_tile": {**CFG, "kernel": "tma", "BLOCK_M": 16, "BLOCK_N": 64, "persistent": False},
    # 256 columns span two weight-scale blocks: the per-column scale vector instead of one scalar per tile
    "ptr_bn256": {**CFG, "BLOCK_N": 256},
    "tma_bn256": {**CFG, "kernel": "tma", "BLOCK_M": 16, "BLOCK_N": 256},
}


def _gemm_case(m, n, k, fmt, device, seed, nan_row=False, x_mult=1.0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * torch.exp(torch.randn(n, 1, generator=g))
    w_q, w_s = R.quantize_weight(w, (128, 128), fmt)
    x_q, x_s = R.quantize_act(_activation(m, k, "cpu", seed + 1, nan_row=nan_row) * x_mult, 128, fmt)
    return [t.to(device) for t in (x_q, x_s, w_q, w_s)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cfg_name", list(CONFIGS))
@pytest.mark.parametrize("m", RAGGED_M)
def test_gemm_ragged(device, cfg_name, m):
    _skip_cpu_on_gpu_box(device)
    n, k = 200, 656  # neither a multiple of 128; 656 % 16 == 0 so the TMA kernel can take it
    for fmt, out_dtype, with_bias, mult in (("float32", torch.bfloat16, False, 1.0),
                                            ("ue8m0", torch.float32, True, 1.0),
                                            ("float32", torch.float16, True, 2.0**-12)):  # fp16: keep under 65504
        x_q, x_s, w_q, w_s = _gemm_case(m, n, k, fmt, device, seed=m + len(cfg_name), x_mult=mult)
        bias = torch.randn(n, device=device) if with_bias else None
        ref = R.gemm_reference(x_q.cpu(), x_s.cpu(), w_q.cpu(), w_s.cpu(), (128, 128), torch.float32,
                               None if bias is None else bias.cpu())
        out = torch.full((m, n), float("nan"), dtype=out_dtype, device=device)  # poisoned
        triton_gemm.fp8_block_gemm(x_q, x_s, w_q, w_s, (128, 128), out_dtype, bias, config=CONFIGS[cfg_name], out=out)
        diff = (out.float().cpu() - ref).abs().max().item()
        assert diff <= gemm_atol(ref, out_dtype), (
            f"backend=triton cfg={cfg_name} fmt={fmt} M={m} N={n} K={k} diff={diff} atol={gemm_atol(ref, out_dtype)}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [64, 150, 320])
def test_gemm_tma_split_tile_past_n(device, n):
    """N_SPLIT=2: the second half of the last tile may start at or past N (N=150: columns 192..255). The result is
    right and nothing is written past N (the masked read of that half's weight scale is not observable here)."""
    _skip_cpu_on_gpu_box(device)
    m, k = 40, 384
    x_q, x_s, w_q, w_s = _gemm_case(m, n, k, "float32", device, seed=n)
    ref = R.gemm_reference(x_q.cpu(), x_s.cpu(), w_q.cpu(), w_s.cpu(), (128, 128), torch.float32)
    out = torch.full((m, n + 8), float("nan"), dtype=torch.float32, device=device)[:, :n]  # poisoned past N
    triton_gemm.fp8_block_gemm(x_q, x_s, w_q, w_s, (128, 128), torch.float32, config=CONFIGS["tma_split2_occ3"],
                               out=out)
    assert (out.cpu() - ref).abs().max() <= gemm_atol(ref, torch.float32)
    assert torch.isnan(out.as_strided((m, 8), out.stride(), n)).all(), "wrote past N"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cfg_name", ["plain", "splitk3"])
def test_gemm_nan_rows_propagate(device, cfg_name):
    _skip_cpu_on_gpu_box(device)
    m, n, k = 13, 96, 384
    x_q, x_s, w_q, w_s = _gemm_case(m, n, k, "float32", device, seed=5, nan_row=True)
    ref = R.gemm_reference(x_q.cpu(), x_s.cpu(), w_q.cpu(), w_s.cpu(), (128, 128), torch.float32)
    out = triton_gemm.fp8_block_gemm(x_q, x_s, w_q, w_s, (128, 128), torch.float32, config=CONFIGS[cfg_name]).cpu()
    nan_rows = torch.isnan(ref).any(dim=1)
    assert nan_rows.sum() >= 1
    rows = slice(None)
    if device == "cpu":  # the interpreter decodes the FP8 NaN byte (0x7F) of the Inf row as a number: GPU only
        rows = slice(0, m - 1)
    assert torch.equal(torch.isnan(out).any(dim=1)[rows], nan_rows[rows]), "NaN rows must be exactly the reference's"
    fin = ~nan_rows
    fin[m - 1] = False
    assert (out[fin] - ref[fin]).abs().max() <= gemm_atol(ref[fin], torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_gemm_long_k_and_mn_major_scales(device):
    _skip_cpu_on_gpu_box(device)
    m, n, k = 5, 64, 8192 if device == "cpu" else 65536
    x_q, x_s, w_q, w_s = _gemm_case(m, n, k, "float32", device, seed=9)
    x_s_mn = x_s.t().contiguous().t()  # M-major, as scaled_mm / DeepGEMM take them
    ref = R.gemm_reference(x_q.cpu(), x_s.cpu(), w_q.cpu(), w_s.cpu(), (128, 128), torch.float32)
    for cfg in (CONFIGS["splitk3"], CONFIGS["plain"]):
        out = triton_gemm.fp8_block_gemm(x_q, x_s_mn, w_q, w_s, (128, 128), torch.bfloat16, config=cfg)
        diff = (out.float().cpu() - ref).abs().max().item()
        assert diff <= gemm_atol(ref, torch.bfloat16), f"long K={k} cfg={cfg} diff={diff}"


@pytest.mark.parametrize("device", DEVICES)
def test_gemm_splitk_counters_reset(device):
    """Two launches in a row with split-K: the per-tile arrival counters must be left at zero."""
    _skip_cpu_on_gpu_box(device)
    x_q, x_s, w_q, w_s = _gemm_case(3, 64, 512, "float32", device, seed=3)
    a = triton_gemm.fp8_block_gemm(x_q, x_s, w_q, w_s, config={**CFG, "SPLIT_K": 4})
    b = triton_gemm.fp8_block_gemm(x_q, x_s, w_q, w_s, config={**CFG, "SPLIT_K": 4})
    assert torch.equal(a, b)
    assert int(triton_gemm._counters(x_q.device, 1).abs().sum()) == 0


def test_gemm_rejects_bad_input():
    x_q, x_s, w_q, w_s = _gemm_case(3, 64, 256, "float32", "cpu", seed=1)
    with pytest.raises(ValueError, match="K="):
        triton_gemm.fp8_block_gemm(x_q[:, :128], x_s[:, :1], w_q, w_s)
    with pytest.raises(ValueError, match="float32"):
        triton_gemm.fp8_block_gemm(x_q, x_s.to(torch.bfloat16), w_q, w_s)
    with pytest.raises(ValueError, match="out_dtype"):
        triton_gemm.fp8_block_gemm(x_q, x_s, w_q, w_s, out_dtype=torch.int32)


def test_default_config_splits_k_for_small_m():
    cfg = triton_gemm.default_config(64, 7168, 16384)
    assert cfg["SPLIT_K"] > 1, "small M on a big weight must split K to fill the SMs"
    assert triton_gemm.default_config(4096, 7168, 16384)["SPLIT_K"] == 1


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 64, 128, 4096])
@pytest.mark.parametrize("nk", [(2112, 7168), (576, 7168), (7168, 2048)])
def test_gemm_deepseek_shapes_default_and_tuned(m, nk):
    n, k = nk
    x_q, x_s, w_q, w_s = _gemm_case(m, n, k, "float32", "cuda", seed=m)
    ref = R.gemm_reference(x_q, x_s, w_q, w_s, (128, 128), torch.float32)
    from blockfp8.backends import tuned
    from blockfp8.platform import detect

    configs = tuned.triton_configs(tuned.platform_keys(detect()), n, k)
    for cfg in (configs.get(tuned.m_bucket(m)), triton_gemm.default_config(m, n, k)):
        out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device="cuda")
        triton_gemm.fp8_block_gemm(x_q, x_s, w_q, w_s, out=out, config=cfg)
        diff = (out.float() - ref).abs().max().item()
        assert diff <= gemm_atol(ref, torch.bfloat16), f"cfg={cfg} M={m} N={n} K={k} diff={diff}"


@pytest.mark.gpu
def test_quantize_act_large_bitwise_gpu():
    """Against the reference run on CPU: torch on CUDA divides by a Python scalar as a multiplication by its
    reciprocal, so ``quant.reference`` on CUDA tensors is not correctly rounded (seen on an H100, torch 2.11)."""
    x = torch.randn(1027, 7168, device="cuda", dtype=torch.bfloat16) * 7
    for fmt in ("float32", "ue8m0"):
        q, s = triton_quant.quantize_act(x, 128, fmt)
        qr, sr = R.quantize_act(x.cpu(), 128, fmt)
        assert torch.equal(q.view(torch.uint8).cpu(), qr.view(torch.uint8)), fmt
        assert torch.equal(s.cpu(), sr), fmt


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout,fmt", [("row_major", "float32"), ("mn_major", "ue8m0"), ("packed_ue8m0", "ue8m0")])
def test_act_quant_facade_paths_agree(device, layout, fmt):
    """act_quant (what scaled_mm / deepgemm call) gives the same bits on its reference and Triton paths."""
    _skip_cpu_on_gpu_box(device)
    from blockfp8.kernels import act_quant

    x = _activation(5, 300, device, seed=11, nan_row=False)
    q_ref, s_ref = act_quant.quantize_act(x.cpu(), 128, fmt, layout, pad_m=4, pad_k=128, fused=False)  # CPU bits
    q, s = triton_quant.quantize_act(x, 128, fmt, layout, pad_m=4, pad_k=128)
    assert q.shape == q_ref.shape == (8, 384) and s.shape == s_ref.shape and s.stride() == s_ref.stride()
    assert _same_fp8(q.cpu(), q_ref.cpu())
    assert torch.equal(s.cpu(), s_ref.cpu())
