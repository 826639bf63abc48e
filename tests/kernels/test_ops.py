"""The blockfp8 operators: each one's fake implementation promises exactly the shapes, dtypes and strides its real
implementation returns (what torch.compile plans memory with), refuses bad inputs naming them, and the operators
compute what quant.reference computes."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from blockfp8.kernels.ops import ops
from blockfp8.quant import layouts as L
from blockfp8.quant import reference as R


def _same_meta(real, fake, what):
    assert tuple(real.shape) == tuple(fake.shape), f"{what}: shape {tuple(real.shape)} vs fake {tuple(fake.shape)}"
    assert real.dtype == fake.dtype, f"{what}: dtype {real.dtype} vs fake {fake.dtype}"
    # a size-1 dimension's stride is never used to address memory, so only the others must agree
    significant = [(a, b) for n, a, b in zip(real.shape, real.stride(), fake.stride(), strict=True) if n > 1]
    assert all(a == b for a, b in significant), f"{what}: strides {real.stride()} vs fake {fake.stride()}"


@pytest.mark.parametrize("m", [1, 3, 13, 67])
@pytest.mark.parametrize("layout,fmt", [("row_major", "float32"), ("mn_major", "float32"), ("mn_major", "ue8m0"),
                                        ("packed_ue8m0", "ue8m0")])
@pytest.mark.parametrize("pad_m", [1, 4])
@pytest.mark.parametrize("pad_k", [1, 128])
def test_quantize_act_fake_matches_real(m, layout, fmt, pad_m, pad_k):
    x = torch.randn(m, 300)
    q, s = ops.quantize_act(x, 128, fmt, layout, pad_m, pad_k, torch.float8_e4m3fn, False)
    with FakeTensorMode() as mode:
        fq, fs = ops.quantize_act(mode.from_tensor(x), 128, fmt, layout, pad_m, pad_k, torch.float8_e4m3fn, False)
    _same_meta(q, fq, f"q layout={layout} M={m} pad={pad_m},{pad_k}")
    _same_meta(s, fs, f"scale layout={layout} M={m} pad={pad_m},{pad_k}")
    qr, sr = R.quantize_act(x, 128, fmt)
    assert q.shape[1] == (384 if pad_k == 128 else 300)
    assert torch.equal(q[:m, :300].view(torch.uint8), qr.view(torch.uint8))
    assert not q[:, 300:].view(torch.uint8).any()  # padding columns are zeros
    assert torch.equal(L.from_layout(s, layout, 3)[:m], sr)


@pytest.mark.parametrize("fused", [False, True])
def test_quantize_act_pad_k_inside_the_last_group_only(fused):
    x = torch.randn(3, 300)
    with pytest.raises(ValueError, match="pad_k=512: K=300 padded to 512 runs past its last 128-wide group"):
        ops.quantize_act(x, 128, "float32", "mn_major", 1, 512, torch.float8_e4m3fn, fused)
    with pytest.raises(ValueError, match="pad_k=0"):
        ops.quantize_act(x, 128, "float32", "mn_major", 1, 0, torch.float8_e4m3fn, fused)


def test_gemm_and_moe_fakes_match_real():
    g = torch.Generator().manual_seed(0)
    w_q, w_s = R.quantize_weight(torch.randn(200, 300, generator=g), (128, 128))
    x_q, x_s = R.quantize_act(torch.randn(7, 300, generator=g), 128)
    out = ops.gemm_reference(x_q, x_s, w_q, w_s, 128, 128, torch.bfloat16, None)
    assert torch.equal(out, R.gemm_reference(x_q, x_s, w_q, w_s, (128, 128), torch.bfloat16))
    e, h, i, t = 3, 256, 128, 5
    w13 = [R.quantize_weight(torch.randn(2 * i, h, generator=g) * 0.05, (128, 128)) for _ in range(e)]
    w2 = [R.quantize_weight(torch.randn(h, i, generator=g) * 0.05, (128, 128)) for _ in range(e)]
    q13, s13 = torch.stack([a for a, _ in w13]), torch.stack([b for _, b in w13])
    q2, s2 = torch.stack([a for a, _ in w2]), torch.stack([b for _, b in w2])
    x = torch.randn(t, h, generator=g)
    ids = torch.tensor([[0, 1], [2, 0], [1, 2], [0, 2], [1, 0]])
    tw = torch.rand(t, 2, generator=g)
    moe = ops.moe_reference(x, q13, s13, q2, s2, tw, ids, 128, 128, "float32", torch.float32)
    assert torch.equal(moe, R.moe_reference(x, q13, s13, q2, s2, tw, ids, (128, 128), "float32", torch.float32))
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake_out = ops.gemm_reference(x_q, x_s, w_q, w_s, 128, 128, torch.bfloat16, None)
        fake_moe = ops.moe_reference(x, q13, s13, q2, s2, tw, ids, 128, 128, "float32", torch.float32)
        fakes = [ops.gemm_triton(x_q, x_s, w_q, w_s, 128, 128, torch.float16, None, []),
                 ops.gemm_scaled_mm(x_q, x_s, w_q, w_s, torch.bfloat16, None),
                 ops.gemm_deepgemm(x_q, x_s, w_q, w_s),
                 ops.moe_triton(x, q13, s13, q2, s2, tw, ids, 128, 128, "float32")]
    _same_meta(out, fake_out, "gemm_reference")
    _same_meta(moe, fake_moe, "moe_reference")
    assert [(tuple(f.shape), f.dtype) for f in fakes] == [((7, 200), torch.float16), ((7, 200), torch.bfloat16),
                                                          ((7, 200), torch.bfloat16), ((t, h), torch.float32)]


def test_fakes_refuse_bad_inputs_naming_them():
    with FakeTensorMode() as mode:
        x_q = mode.from_tensor(torch.zeros(4, 256, dtype=torch.float8_e4m3fn))
        w_q = mode.from_tensor(torch.zeros(64, 384, dtype=torch.float8_e4m3fn))
        s = mode.from_tensor(torch.ones(4, 2))
        with pytest.raises(ValueError, match="x has K=256, the weight K=384"):
            ops.gemm_reference(x_q, s, w_q, s, 128, 128, torch.bfloat16, None)
        with pytest.raises(ValueError, match="expected a 2-D"):
            ops.quantize_act(mode.from_tensor(torch.zeros(2, 3, 128)), 128, "float32", "row_major", 1, 1,
                             torch.float8_e4m3fn, False)
        with pytest.raises(ValueError, match="valid values: row_major"):
            ops.quantize_act(mode.from_tensor(torch.zeros(2, 128)), 128, "float32", "k_major", 1, 1,
                             torch.float8_e4m3fn, False)


def test_triton_config_survives_the_operator_encoding():
    from blockfp8.kernels.triton.gemm import decode_config, default_config, encode_config

    for cfg in (default_config(1, 2112, 7168), default_config(4096, 7168, 2048),
                {"kernel": "tma", "BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128}):
        back = decode_config(encode_config(cfg))
        assert {k: back[k] for k in cfg} == cfg
    assert encode_config(None) == [] and decode_config([]) is None
    assert decode_config(encode_config({"kernel": "tma", "BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 128}))[
        "num_stages"] == 4, "a TMA config keeps the TMA kernel's default pipeline depth"
