"""BlockFP8Linear vs the reference GEMM, for every backend this machine can run (CPU: reference)."""

import dataclasses

import pytest
import torch

from blockfp8.backends import select
from blockfp8.backends.base import BackendId, ScaleFmt
from blockfp8.backends.registry import PREFERENCE_ORDER, get_backend
from blockfp8.config import BlockFP8Config
from blockfp8.nn import BlockFP8Linear
from blockfp8.nn.linear import runtime_platform
from blockfp8.platform import detect
from blockfp8.quant import metrics
from blockfp8.quant import reference as ref
from blockfp8.testing import tolerances as tol

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PLATFORM = runtime_platform(torch.device(DEVICE), None)


def _available():
    out = []
    for b in PREFERENCE_ORDER:
        ok, _ = get_backend(b).is_supported(PLATFORM)
        if ok:
            out.append(b)
    return out


BACKENDS = _available()
SHAPES = [(1, 128, 128), (3, 200, 300), (13, 576, 192), (67, 192, 576), (199, 256, 1536)]  # M, N, K


def _layer(n, k, backend, dtype, scale_fmt=None, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) * 0.05)
        if bias:
            lin.bias.copy_(torch.randn(n, generator=g))
    lin = lin.to(device=DEVICE, dtype=dtype)
    cfg = BlockFP8Config(linear_backend=str(backend), scale_fmt=scale_fmt)
    return lin, BlockFP8Linear.from_linear(lin, cfg, name=f"layer[{backend}]", platform=PLATFORM)


def _expected(layer, x, act_fmt):
    """The reference, on the CPU (the numerical definition; on CUDA torch divides by a scalar through its
    reciprocal, which can move a scale by one ulp): quantize the activation the same way, GEMM the checkpoint
    weight (requantized to UE8M0 where the decision says), float32 accumulate, the layer's output dtype."""
    w, s = layer.weight.data.cpu(), layer.weight_scale_inv.data.cpu()
    if layer.decision.requant_weight_ue8m0:
        w, s = ref.requant_to_ue8m0(w, s, layer.block_size)
    xq, xs = ref.quantize_act(x.reshape(-1, x.shape[-1]).cpu(), layer.block_size[1], act_fmt)
    bias = None if layer.bias is None else layer.bias.cpu()
    out = ref.gemm_reference(xq, xs, w, s, layer.block_size, layer.params_dtype, bias)
    return out.reshape(*x.shape[:-1], -1).to(x.device)


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_layer_matches_reference_gemm(backend, m, n, k, dtype):
    if not get_backend(backend).can_implement(BlockFP8Linear(k, n, params_dtype=dtype, device="meta").problem())[0]:
        pytest.skip(f"{backend} cannot implement N={n} K={k} {dtype}")
    _, layer = _layer(n, k, backend, dtype)
    assert layer.decision.backend is BackendId(backend)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(device=DEVICE, dtype=dtype)
    out = layer(x)
    want = _expected(layer, x, str(layer.decision.act_scale_fmt))
    assert out.dtype == dtype and out.shape == (m, n)
    err = (out.float() - want.float()).abs().max().item()
    assert err <= tol.gemm_atol(want.float(), dtype), f"backend={backend} M={m} N={n} K={k} {dtype} diff={err}"


@pytest.mark.parametrize("lead", [(), (5,), (2, 3), (2, 1, 4)])
def test_any_leading_shape(lead):
    _, layer = _layer(200, 300, BackendId.REFERENCE, torch.float32)
    x = torch.randn(*lead, 300, device=DEVICE)
    out = layer(x)
    assert out.shape == (*lead, 200)
    flat = layer(x.reshape(-1, 300)).reshape(*lead, 200)
    assert torch.equal(out, flat)


def test_reference_path_is_exact_float32_math():
    """The layer (fp32 out) vs a float64 matmul of the very operands it quantized."""
    _, layer = _layer(576, 192, BackendId.REFERENCE, torch.float32, bias=False)
    x = torch.randn(67, 192, device=DEVICE)
    xq, xs = ref.quantize_act(x, 128)
    want = ref.dequantize_act(xq, xs, 128, torch.float64) @ ref.dequantize_weight(
        layer.weight, layer.weight_scale_inv, (128, 128), torch.float64).t()
    out = layer(x).double()
    assert (out - want).abs().max() <= tol.REFERENCE_GEMM_RTOL * want.abs().max()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_close_to_the_float_layer(dtype):
    lin, layer = _layer(576, 1536, BackendId.REFERENCE, dtype)
    x = torch.randn(13, 1536, device=DEVICE).to(dtype)
    assert metrics.calc_diff(layer(x), lin(x)) < tol.E2E_CALC_DIFF


def test_ue8m0_decision_requantizes_and_keeps_checkpoint():
    """config.scale_fmt=ue8m0 on a float32-scaled weight: the backend requantizes (second rounding) into the
    prepared weight, the checkpoint tensors stay, activations get UE8M0 scales too."""
    _, layer = _layer(300, 200, BackendId.REFERENCE, torch.float32, scale_fmt="ue8m0")
    d = layer.decision
    assert d.requant_weight_ue8m0 and d.act_scale_fmt is ScaleFmt.UE8M0 and d.weight_scale_fmt is ScaleFmt.UE8M0
    assert not bool(ref.is_power_of_two(layer.weight_scale_inv).all())  # checkpoint scales untouched
    assert torch.equal(layer.prepared.checkpoint_scale, layer.weight_scale_inv)
    assert bool(ref.is_power_of_two(layer.prepared.scale).all())
    x = torch.randn(7, 200, device=DEVICE)
    out, want = layer(x), _expected(layer, x, "ue8m0")
    if DEVICE == "cpu":
        assert torch.equal(out, want)
    else:  # the reference backend on CUDA divides by scalars through reciprocals (see _expected)
        assert (out - want).abs().max() <= tol.gemm_atol(want, torch.float32)


def test_ue8m0_checkpoint_is_not_requantized():
    lin = torch.nn.Linear(200, 300, bias=False)
    layer = BlockFP8Linear.from_linear(lin, BlockFP8Config(scale_fmt="ue8m0"), scale_fmt="ue8m0")
    assert layer.problem().checkpoint_scale_fmt is ScaleFmt.UE8M0
    assert not layer.decision.requant_weight_ue8m0
    assert layer.prepared.weight.data_ptr() == layer.weight.data_ptr()  # no copy


def test_from_fp8_takes_e8m0_bytes():
    q, s = ref.quantize_weight(torch.randn(256, 384), (128, 128), "ue8m0")
    layer = BlockFP8Linear.from_fp8(q, ref.ue8m0_exponent(s).view(torch.float8_e8m0fnu), params_dtype=torch.float32)
    assert torch.equal(layer.weight_scale_inv, s)


def test_decision_resolved_once(monkeypatch):
    calls = []
    real = select.resolve

    def counting(*a, **k):
        calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(select, "resolve", counting)
    _, layer = _layer(200, 300, BackendId.REFERENCE, torch.float32)
    for m in (1, 5, 9):
        layer(torch.randn(m, 300, device=DEVICE))
    assert len(calls) == 1


def test_consumers_read_the_decision(monkeypatch):
    """Activation quantization and the GEMM both get the layer's one Decision object."""
    _, layer = _layer(200, 300, BackendId.REFERENCE, torch.float32)
    seen = []
    backend = layer._backend
    real_quant = backend.quantize_act

    def spy(x, decision, group_size):
        seen.append(decision)
        return real_quant(x, decision, group_size)

    monkeypatch.setattr(backend, "quantize_act", spy)
    layer(torch.randn(3, 300, device=DEVICE))
    assert seen == [layer.decision] and seen[0] is layer.decision


def test_unavailable_explicit_backend_raises():
    with pytest.raises(select.BackendUnavailableError, match="triton"):
        BlockFP8Linear.from_linear(torch.nn.Linear(128, 128), BlockFP8Config(linear_backend="triton"))


def test_runtime_platform_keeps_cpu_layers_on_cpu():
    plat = runtime_platform(torch.device("cpu"), None)
    assert plat.capability is None or plat.simulated
    given = dataclasses.replace(detect(), capability=(9, 0), simulated=True)
    assert runtime_platform(torch.device("cpu"), given) is given


def test_errors():
    layer = BlockFP8Linear(300, 200, params_dtype=torch.float32, name="blk.q_proj")
    with pytest.raises(RuntimeError, match="blk.q_proj: call process_weights_after_loading"):
        layer(torch.randn(2, 300))
    with pytest.raises(ValueError, match="blk.q_proj.weight_scale_inv: block scale at \\[0, 0\\] is nan"):
        layer.process_weights_after_loading()  # created, never loaded
    q, s = ref.quantize_weight(torch.randn(200, 300))
    with pytest.raises(ValueError, match="blk.q_proj.weight_scale_inv: shape \\(2, 2\\) does not match"):
        layer.load_weights(q, s[:, :2])
    with pytest.raises(ValueError, match="blk.q_proj.weight: shape"):
        layer.load_weights(q.t().contiguous(), s)
    layer.load_weights(q, s)
    layer.process_weights_after_loading()
    with pytest.raises(ValueError, match="input has K=299"):
        layer(torch.randn(2, 299))
    with pytest.raises(TypeError, match="input dtype torch.int64"):
        layer(torch.ones(2, 300, dtype=torch.int64))
    with pytest.raises(ValueError, match="out_features=0"):
        BlockFP8Linear(3, 0)
