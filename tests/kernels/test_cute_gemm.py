"""The CuTe DSL Hopper GEMM (``kernels.cutedsl``) and its backend: tile heuristic, bad input, the backend's rules on
CPU; on an H100/H200 with ``blockfp8[cute]`` installed, every tile config against ``quant.reference`` on fresh random
operands (ragged M, N, K, both scale formats, bf16 and fp16, NaN rows) and a layer under ``torch.compile`` and a
CUDA graph."""

import dataclasses

import pytest
import torch

from blockfp8.backends.base import BackendId, GemmProblem
from blockfp8.backends.registry import get_backend
from blockfp8.kernels.cutedsl import gemm as cute_gemm
from blockfp8.platform import CUTE_DSL, detect
from blockfp8.quant import reference as R
from blockfp8.testing.tolerances import gemm_atol

CONFIGS = {"128x128": (128, 128, 1, 1, 1, 1), "128x64": (128, 64, 1, 1, 1, 1), "64x128": (64, 128, 1, 1, 1, 1),
           "64x64": (64, 64, 1, 1, 1, 1), "128x128_cluster_n2": (128, 128, 1, 2, 1, 1),
           "128x128_cluster_m2_swizzle4": (128, 128, 2, 1, 4, 0)}


def _hopper(with_dsl: bool):
    plat = detect("sm_90")
    return dataclasses.replace(plat, simulated=False, libraries={**plat.libraries, CUTE_DSL: with_dsl})


def test_backend_supported_only_on_sm90_with_the_dsl():
    backend = get_backend("cute")
    assert backend.is_supported(_hopper(True))[0]
    ok, why = backend.is_supported(_hopper(False))
    assert not ok and "blockfp8[cute]" in why
    ok, why = backend.is_supported(detect("sm_100"))
    assert not ok and "sm_90a" in why
    assert not backend.is_supported(dataclasses.replace(detect(), capability=None))[0]


@pytest.mark.parametrize(("problem", "needle"), [
    (GemmProblem(256, 200), "K=200"),
    (GemmProblem(100, 256), "N=100"),
    (GemmProblem(256, 256, out_dtype="float32"), "float32"),
    (GemmProblem(256, 256, block_size=(64, 64)), "block size"),
    (GemmProblem(256, 256, fp8_dtype="float8_e4m3fnuz"), "e4m3fnuz"),
])
def test_backend_names_what_it_cannot_implement(problem, needle):
    ok, why = get_backend("cute").can_implement(problem)
    assert not ok and needle in why
    assert get_backend("cute").can_implement(GemmProblem(2880, 2880))[0]  # ragged, but TMA-aligned


def test_heuristic_fills_the_sms_with_the_largest_tiles():
    assert cute_gemm.default_config(4096, 8192, 132)[:2] == (128, 128)
    assert cute_gemm.default_config(128, 7168, 132)[:2] == (128, 64)  # 112 tiles: 128 x 128 would give 56
    assert cute_gemm.default_config(1, 4096, 132)[:2] == (64, 64)  # nothing fills 60 %: the most tiles
    for m in (1, 17, 300, 5000):
        config = cute_gemm.default_config(m, 2880, 132)
        assert config[:2] in cute_gemm.HEURISTIC_TILES and config[2:] == (1, 1, 1, 1)


def test_launcher_rejects_bad_input_naming_the_tensor():
    x_q, x_s = R.quantize_act(torch.randn(4, 256), 128)
    w_q, w_s = R.quantize_weight(torch.randn(256, 256))
    with pytest.raises(ValueError, match="K=200"):
        cute_gemm.fp8_block_gemm(x_q[:, :200], x_s, w_q[:, :200], w_s)
    with pytest.raises(ValueError, match="got"):
        cute_gemm.fp8_block_gemm(x_q, x_s, w_q[:, :128], w_s)
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        cute_gemm.fp8_block_gemm(x_q, x_s, w_q, w_s, out_dtype=torch.float32)
    with pytest.raises(ValueError, match="CUDA"):
        cute_gemm.fp8_block_gemm(x_q, x_s, w_q, w_s)
    big = torch.empty((2**17, 2**14), dtype=torch.float8_e4m3fn, device="meta")  # 2**31 elements, no memory
    with pytest.raises(ValueError, match="32-bit strides"):
        cute_gemm.fp8_block_gemm(big, x_s, torch.empty((256, 2**14), dtype=torch.float8_e4m3fn, device="meta"), w_s)


# ------------------------------------------------------------------ H100 / H200 with blockfp8[cute]


def _needs_kernel():
    if not (torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)):
        pytest.skip("needs an SM90 GPU")
    pytest.importorskip("cutlass.cute")
    pytest.importorskip("tvm_ffi")


def _case(m, n, k, fmt, seed, nan_row=False, x_mult=1.0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * torch.exp(torch.randn(n, 1, generator=g))
    x = torch.randn(m, k, generator=g) * torch.exp(torch.randn(m, 1, generator=g) * 3) * x_mult
    if nan_row and m > 2:
        x[m // 2, k // 3] = float("nan")
    w_q, w_s = R.quantize_weight(w, (128, 128), fmt)
    x_q, x_s = R.quantize_act(x, 128, fmt)
    return [t.cuda().contiguous() for t in (x_q, x_s.float(), w_q, w_s.float())]


@pytest.mark.gpu
@pytest.mark.cute
@pytest.mark.parametrize("cfg_name", list(CONFIGS))
@pytest.mark.parametrize(("m", "n", "k"), [(1, 256, 256), (67, 200, 656), (130, 1000, 1040), (199, 2880, 2880),
                                           (300, 192, 4112), (1000, 384, 128)])
def test_gemm_ragged_against_reference(cfg_name, m, n, k):
    _needs_kernel()
    for fmt, out_dtype, mult in (("float32", torch.bfloat16, 1.0), ("ue8m0", torch.bfloat16, 1.0),
                                 ("float32", torch.float16, 2.0**-12)):  # fp16: keep under 65504
        x_q, x_s, w_q, w_s = _case(m, n, k, fmt, seed=m + n + k, x_mult=mult)
        want = R.gemm_reference(x_q, x_s, w_q, w_s, (128, 128), torch.float32)
        got = cute_gemm.fp8_block_gemm(x_q, x_s, w_q, w_s, out_dtype, config=CONFIGS[cfg_name])
        diff = (got.float() - want).abs().max().item()
        assert diff <= gemm_atol(want, out_dtype), f"cfg={cfg_name} fmt={fmt} {out_dtype} M={m} N={n} K={k} {diff}"


@pytest.mark.gpu
@pytest.mark.cute
def test_gemm_nan_rows_and_bias():
    _needs_kernel()
    m, n, k = 13, 96, 384
    x_q, x_s, w_q, w_s = _case(m, n, k, "float32", seed=5, nan_row=True)
    bias = torch.randn(n, device="cuda")
    want = R.gemm_reference(x_q, x_s, w_q, w_s, (128, 128), torch.float32, bias)
    got = cute_gemm.fp8_block_gemm(x_q, x_s, w_q, w_s, torch.bfloat16, bias.bfloat16()).float()
    nan_rows = torch.isnan(want).any(dim=1)
    assert nan_rows.sum() == 1 and torch.equal(torch.isnan(got).any(dim=1), nan_rows)
    assert (got[~nan_rows] - want[~nan_rows]).abs().max() <= 2 * gemm_atol(want[~nan_rows], torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.cute
@pytest.mark.parametrize("m", [1, 64, 200, 1024])
@torch.no_grad()
def test_layer_compiles_and_captures(m):
    _needs_kernel()
    from blockfp8.config import BlockFP8Config
    from blockfp8.nn import BlockFP8Linear

    torch.manual_seed(m)
    lin = torch.nn.Linear(2880, 2112, bias=False, dtype=torch.bfloat16, device="cuda")
    layer = BlockFP8Linear.from_linear(lin, BlockFP8Config(linear_backend="cute"))
    assert layer.decision.backend is BackendId.CUTE
    ref = BlockFP8Linear.from_linear(lin, BlockFP8Config(linear_backend="reference"))
    x = torch.randn(m, 2880, device="cuda", dtype=torch.bfloat16)
    eager = layer(x)
    want = ref(x).float()
    assert (eager.float() - want).abs().max() <= gemm_atol(want, torch.bfloat16)
    compiled = torch.compile(layer, fullgraph=True)
    assert torch.equal(compiled(x), eager)
    torch._dynamo.reset()
    graph = torch.cuda.CUDAGraph()
    static_x = x.clone()
    with torch.cuda.graph(graph):
        static_out = layer(static_x)
    static_x.copy_(x * 2)
    graph.replay()
    assert torch.equal(static_out, layer(x * 2))
