"""The real DeepGEMM on a GPU, where ``deep_gemm`` imports and passes its smoke GEMM: the dense kernel through a
layer, both grouped MoE kernels (eager and replayed from a CUDA graph) against ``quant.reference``, and on SM100
our UE8M0 weight packing against DeepGEMM's own ``transform_sf_into_required_layout``."""

import pytest
import torch

from blockfp8.config import BlockFP8Config
from blockfp8.kernels import deepgemm as dg
from blockfp8.kernels import deepgemm_moe as M
from blockfp8.nn import BlockFP8Experts, BlockFP8Linear
from blockfp8.quant import layouts as L
from blockfp8.quant import reference as R
from blockfp8.quant.metrics import calc_diff
from blockfp8.testing.tolerances import E2E_CALC_DIFF, gemm_atol

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def deep_gemm():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    module, why = dg.load()
    if module is None:
        pytest.skip(why)
    ok, why = dg.smoke_cached()
    if not ok:
        pytest.skip(why)
    return module


def _family():
    return torch.cuda.get_device_capability()[0] * 10


@pytest.mark.parametrize("n,k", [(2112, 7168), (576, 7168), (7168, 2048), (4096, 512)])
@pytest.mark.parametrize("m", [1, 67, 512])
def test_dense_layer_on_real_deepgemm(deep_gemm, n, k, m):
    torch.manual_seed(m + n)
    w_q, w_s = R.quantize_weight(torch.randn(n, k, device="cuda") * k ** -0.5, (128, 128))
    layer = BlockFP8Linear.from_fp8(w_q, w_s, config=BlockFP8Config(linear_backend="deepgemm"))
    d = layer.decision
    assert d.backend == "deepgemm"
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    out = layer(x)
    rw = R.requant_to_ue8m0(w_q, w_s, (128, 128)) if d.requant_weight_ue8m0 else (w_q, w_s)
    x_q, x_s = R.quantize_act(x, 128, str(d.act_scale_fmt))
    ref = R.gemm_reference(x_q, x_s, *rw, (128, 128), torch.float32)
    err = (out.float() - ref).abs().max().item()
    assert err <= gemm_atol(ref, torch.bfloat16), f"deepgemm dense M={m} N={n} K={k} max error {err}"


@pytest.mark.parametrize("kernel", [M.MASKED_KERNEL, M.CONTIGUOUS_KERNEL])
@pytest.mark.parametrize("t", [1, 37, 300])
def test_grouped_moe_kernels_on_real_deepgemm(deep_gemm, kernel, t):
    e, k, h, i = 16, 4, 1024, 384
    torch.manual_seed(t)
    ex = BlockFP8Experts.from_fused(
        (torch.randn(e, 2 * i, h, device="cuda") * h ** -0.5).to(torch.bfloat16),
        (torch.randn(e, h, i, device="cuda") * i ** -0.5).to(torch.bfloat16),
        act_fn=torch.nn.SiLU(), config=BlockFP8Config(moe_backend="deepgemm"))
    p = ex.prepared_moe
    assert ex.decision.backend == "deepgemm" and p is not None, "grouped, not a per-expert loop"
    p.extra = {**p.extra, "masked_max_tokens": 1 << 30 if kernel == M.MASKED_KERNEL else 0}
    w, ids = torch.topk(torch.softmax(torch.randn(t, e, device="cuda"), -1), k, dim=-1)
    w = w / w.sum(-1, keepdim=True)
    x = torch.randn(t, h, device="cuda", dtype=torch.bfloat16)
    s13, s2 = p.w13_scale, p.w2_scale
    if s13.dtype == torch.int32:  # SM100: packed per weight row at load
        s13, s2 = L.unpack_ue8m0_per_row(s13, R.cdiv(h, 128)), L.unpack_ue8m0_per_row(s2, R.cdiv(i, 128))
    ref = R.moe_reference(x, p.w13, s13, p.w2, s2, w, ids, p.block_size, str(ex.decision.act_scale_fmt))
    with torch.inference_mode():
        out = ex(x, ids, w).float()
        diff = calc_diff(out.double(), ref.double())
        assert diff < E2E_CALC_DIFF, f"deepgemm {kernel} T={t} calc_diff={diff}"
        graph, static = torch.cuda.CUDAGraph(), {}
        ex(x, ids, w)  # warm (JIT) outside the capture
        with torch.cuda.graph(graph):
            static["out"] = ex(x, ids, w)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static["out"].float(), out), f"deepgemm {kernel} T={t}: graph replay differs from eager"


def test_sm100_packing_matches_deepgemm_transform(deep_gemm):
    if _family() != 100:
        pytest.skip("the packed UE8M0 layout is SM100's")
    n, k = 576, 7168
    _, block = R.quantize_weight(torch.randn(n, k, device="cuda"), (128, 128), "ue8m0")
    ours = L.pack_ue8m0_per_row(block, n, 128)
    theirs = deep_gemm.transform_sf_into_required_layout(block, n, k, (1, 128, 128), None, False)
    assert theirs.dtype == torch.int32 and torch.equal(ours, theirs)
    act = R.quantize_act(torch.randn(67, k, device="cuda"), 128, "ue8m0")[1]
    theirs_a = deep_gemm.transform_sf_into_required_layout(act, 67, k, (1, 128, 128), None, True)
    assert torch.equal(L.pack_ue8m0(act), theirs_a)
