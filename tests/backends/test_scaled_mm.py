"""The scaled_mm backend's quantize -> gemm path: fused quantizer, rows padded to 4 in storage, reached by the
GEMM without a copy; checked against quant.reference (GPU), and the padded-storage views on CPU."""

import pytest
import torch

from blockfp8.backends.base import BackendId, Decision, ScaleFmt, ScaleLayout
from blockfp8.backends.registry import get_backend
from blockfp8.quant import reference as R
from blockfp8.testing.tolerances import gemm_atol


def _decision(fmt="float32", fused=False):
    return Decision(kind="linear", backend=BackendId.SCALED_MM, weight_scale_fmt=ScaleFmt(fmt),
                    act_scale_fmt=ScaleFmt(fmt), act_scale_layout=ScaleLayout.MN_MAJOR,
                    weight_scale_layout=ScaleLayout.ROW_MAJOR, requant_weight_ue8m0=False, use_deep_gemm=False,
                    source="config", arch="sm_90", fused_act_quant=fused)


@pytest.mark.parametrize("m", [1, 3, 13, 67])
def test_quantize_act_leaves_padded_rows_in_storage(m):
    from blockfp8.kernels.scaled_mm import _rows_view

    backend = get_backend("scaled_mm")
    x = torch.randn(m, 384)
    x_q, x_s = backend.quantize_act(x, _decision(), 128)
    assert x_q.shape == (m, 384) and x_s.shape == (m, 3) and x_s.stride(0) == 1
    qr, sr = R.quantize_act(x, 128)
    assert torch.equal(x_q.view(torch.uint8), qr.view(torch.uint8)) and torch.equal(x_s, sr)
    m4 = -(-m // 4) * 4
    full_q, full_s = _rows_view(x_q, m4), _rows_view(x_s, m4)
    assert full_q is not None and full_s is not None
    assert torch.count_nonzero(full_q[m:].float()) == 0 and bool(torch.isfinite(full_s[m:]).all())
    assert _rows_view(torch.zeros(3, 5), 4) is None, "a tensor without room must not be viewed past its end"


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 3, 13, 67, 199])
def test_scaled_mm_backend_gemm_matches_reference(m):
    backend = get_backend("scaled_mm")
    n, k = 576, 7168
    w_q, w_s = R.quantize_weight(torch.randn(n, k), (128, 128))
    dec = _decision(fused=True)
    prepared = backend.prepare_weight(w_q.cuda(), w_s.cuda(), dec, (128, 128))
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    x_q, x_s = backend.quantize_act(x, dec, 128)
    out = backend.gemm(x_q, x_s, prepared, torch.bfloat16)
    assert out.shape == (m, n)
    qr, sr = R.quantize_act(x.cpu(), 128)
    ref = R.gemm_reference(qr, sr, w_q, w_s, (128, 128), torch.float32)
    diff = (out.float().cpu() - ref).abs().max().item()
    assert diff <= gemm_atol(ref, torch.bfloat16), f"backend=scaled_mm M={m} N={n} K={k} diff={diff}"


@pytest.mark.parametrize("n,k", [(128, 128), (512, 256), (256, 768), (576, 7168)])
def test_every_layer_path_pads_the_weight_scale_k_groups(n, k):
    """torch 2.11 rejects blockwise weight scales whose K groups are not a multiple of 4 ("scale_b must have
    shape 4 x 1, got [1, 1]" at N=K=128; "4 x 4, got [2, 4]" for MoE experts at N=512, K=256): the dense layer
    and every expert GEMM of the MoE layer get their scales from ScaledMMBackend.prepare_weight."""
    from blockfp8.config import BlockFP8Config
    from blockfp8.nn import BlockFP8Experts, BlockFP8Linear
    from blockfp8.platform import detect

    plat = detect("sm_90")

    def check(prepared, rows, cols, what):
        assert prepared.backend is BackendId.SCALED_MM, what
        want = (-(-cols // 512) * 4, -(-rows // 128))  # scale_b = scale.t(): [K groups padded to 4, N / 128]
        assert tuple(prepared.scale.t().shape) == want, f"{what} N={rows} K={cols}: {tuple(prepared.scale.shape)}"
        assert torch.equal(prepared.scale[:, :cols // 128], prepared.checkpoint_scale), what

    lin = torch.nn.Linear(k, n, bias=False).bfloat16()
    layer = BlockFP8Linear.from_linear(lin, BlockFP8Config(linear_backend="scaled_mm"), platform=plat)
    check(layer.prepared, n, k, "linear")
    if (n // 2) % 128 or n * k > 512 * 768:  # experts: H = k, I = n / 2 (w13 N = n, K = k; w2 N = k, K = n / 2)
        return
    gate_up, down = torch.randn(3, n, k) * 0.05, torch.randn(3, k, n // 2) * 0.05
    ex = BlockFP8Experts.from_fused(gate_up.bfloat16(), down.bfloat16(), config=BlockFP8Config(moe_backend="scaled_mm"),
                                    platform=plat)
    for per in ex.prepared:
        check(per["w13"], n, k, "moe w13")
        check(per["down"], k, n // 2, "moe w2")


def test_shapes_scaled_mm_cannot_take_are_declined():
    from blockfp8.backends.base import GemmProblem

    ok, why = get_backend("scaled_mm").can_implement(GemmProblem(n=200, k=384))
    assert not ok and "N % 16" in why
    ok, why = get_backend("scaled_mm").can_implement(GemmProblem(n=256, k=200))
    assert ok and "K=200 padded with zeros to a multiple of 128" in why, "a ragged K runs on a padded weight"
