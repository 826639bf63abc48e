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


# ------------------------------------------------------------------ per-M dispatch (fake backends, CPU)
class _FakeBackend:
    """Claims an H100 backend's id, runs the reference math, records every call."""

    def __init__(self, backend_id, calls, supported=True):
        self.name, self.calls, self.supported = BackendId(backend_id), calls, supported
        self.ref = get_backend("reference")

    def is_supported(self, platform):
        return self.supported, "fake"

    def can_implement(self, problem):
        return True, "fake"

    def required_scale_fmt(self, platform):
        return None

    def scale_layouts(self, platform):
        return self.ref.scale_layouts(platform)

    def _ref_decision(self, decision):
        assert decision.backend is self.name, f"{self.name} got a decision for {decision.backend}"
        return dataclasses.replace(decision, backend=BackendId.REFERENCE)

    def prepare_weight(self, w_q, w_scale, decision, block_size):
        self.calls.append(("prepare", self.name))
        p = self.ref.prepare_weight(w_q, w_scale, self._ref_decision(decision), block_size)
        p.backend = self.name
        return p

    def quantize_act(self, x, decision, group_size):
        self.calls.append(("quantize", self.name, x.shape[0]))
        return self.ref.quantize_act(x, self._ref_decision(decision), group_size)

    def gemm(self, x_q, x_scale, prepared, out_dtype, bias=None):
        assert prepared.backend is self.name
        self.calls.append(("gemm", self.name, x_q.shape[0]))
        return self.ref.gemm(x_q, x_scale, prepared, out_dtype, bias)


FAKE_GPU = "NVIDIA H100 80GB HBM3"


@pytest.fixture
def fake_h100(monkeypatch):
    """An H100 platform whose deepgemm is missing and whose scaled_mm / triton are fakes; a tuned table that
    picks triton up to M=64 and scaled_mm above, for N=256, K=384."""
    from blockfp8.backends import tuned

    calls = []
    fakes = {BackendId.DEEPGEMM: _FakeBackend("deepgemm", calls, supported=False),
             BackendId.SCALED_MM: _FakeBackend("scaled_mm", calls), BackendId.TRITON: _FakeBackend("triton", calls)}
    real = select.get_backend
    monkeypatch.setattr(select, "get_backend", lambda b: fakes.get(BackendId(b)) or real(b))
    table = {FAKE_GPU.replace(" ", "_"): {"256,384": {"1": {"backend": "triton"}, "64": {"backend": "triton"},
                                                      "128": {"backend": "scaled_mm"},
                                                      "4096": {"backend": "deepgemm"}}}}
    monkeypatch.setattr(tuned, "load", lambda file, path=None: table if file == tuned.DISPATCH_FILE else {})
    plat = dataclasses.replace(detect("sm_90"), gpu_name=FAKE_GPU, simulated=False)
    return plat, calls


def _fp8_layer(n, k, config, plat):
    q, s = ref.quantize_weight(torch.randn(n, k, generator=torch.Generator().manual_seed(n)), (128, 128))
    return BlockFP8Linear.from_fp8(q, s, config=config, params_dtype=torch.float32, platform=plat)


def test_automatic_choice_dispatches_by_m_within_candidates(fake_h100):
    plat, calls = fake_h100
    layer = _fp8_layer(256, 384, BlockFP8Config(), plat)
    d = layer.decision
    assert (d.backend, d.source) == (BackendId.SCALED_MM, "default")
    assert d.candidates == (BackendId.SCALED_MM, BackendId.TRITON, BackendId.REFERENCE)
    # the table's "deepgemm" for large M is not a candidate: the policy's first candidate serves it
    assert d.dispatch == ((64, BackendId.TRITON), (8192, BackendId.SCALED_MM))
    assert d.as_dict()["dispatch"] == {"64": "triton", "8192": "scaled_mm"}
    assert any(r.startswith("dispatch: per M bucket") for r in d.reasons)
    assert sorted(calls) == [("prepare", BackendId.SCALED_MM), ("prepare", BackendId.TRITON)], "each once"
    prepared = [layer._runners[b][2] for b in (BackendId.TRITON, BackendId.SCALED_MM)]
    assert prepared[0].weight.data_ptr() == prepared[1].weight.data_ptr() == layer.weight.data_ptr()  # shared
    for m, want in [(1, "triton"), (3, "triton"), (64, "triton"), (65, "scaled_mm"), (199, "scaled_mm"),
                    (9000, "scaled_mm")]:
        calls.clear()
        x = torch.randn(m, 384)
        out = layer(x)
        assert [c[:2] for c in calls] == [("quantize", BackendId(want)), ("gemm", BackendId(want))], f"M={m}"
        assert torch.equal(out, _expected(layer, x, "float32")), f"M={m}"


@pytest.mark.parametrize("how", ["config", "env"])
def test_explicit_choice_is_never_dispatched_away_from(fake_h100, monkeypatch, how):
    plat, calls = fake_h100
    if how == "env":
        monkeypatch.setenv("BLOCKFP8_GEMM_BACKEND", "scaled_mm")
        config = BlockFP8Config()
    else:
        config = BlockFP8Config(linear_backend="scaled_mm")
    layer = _fp8_layer(256, 384, config, plat)
    assert (layer.decision.source, layer.decision.candidates, layer.decision.dispatch) == \
        (how, (BackendId.SCALED_MM,), ())
    for m in (1, 3, 199):  # the table says triton for M <= 64
        calls.clear()
        layer(torch.randn(m, 384))
        assert {c[1] for c in calls} == {BackendId.SCALED_MM}, f"{how} M={m}"


def test_no_table_entry_means_no_dispatch(fake_h100):
    plat, calls = fake_h100
    layer = _fp8_layer(100, 384, BlockFP8Config(), plat)  # N=100: neither in the table nor within 2x of 256
    assert layer.decision.dispatch == () and calls == [("prepare", BackendId.SCALED_MM)]


def test_an_untuned_shape_near_a_tuned_one_dispatches_like_it(fake_h100):
    plat, _ = fake_h100
    layer = _fp8_layer(200, 384, BlockFP8Config(), plat)  # N=200: within 2x of the table's N=256
    assert layer.decision.dispatch == ((64, BackendId.TRITON), (8192, BackendId.SCALED_MM))


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 67, 600])
def test_auto_dispatch_on_this_gpu_matches_reference(m):
    """Automatic choice on a real GPU with a tuned-table entry (DeepSeek-V3 N=2112, K=7168): every backend of the
    plan is prepared once and each M runs on its bucket's backend, within the bf16 bound of the reference."""
    g = torch.Generator().manual_seed(5)
    q, s = ref.quantize_weight(torch.randn(2112, 7168, generator=g) * 0.05, (128, 128))
    layer = BlockFP8Linear.from_fp8(q.to(DEVICE), s.to(DEVICE), config=BlockFP8Config(), platform=PLATFORM)
    d = layer.decision
    assert set(layer._runners) == {d.backend, *(b for _, b in d.dispatch)}
    assert all(b in d.candidates for _, b in d.dispatch)
    x = torch.randn(m, 7168, generator=g).to(device=DEVICE, dtype=torch.bfloat16)
    out = layer(x)
    want = _expected(layer, x, str(d.act_scale_fmt))
    err = (out.float() - want.float()).abs().max().item()
    ran = d.backend_for_m(m)
    assert err <= tol.gemm_atol(want.float(), torch.bfloat16), f"backend={ran} (auto) M={m} N=2112 K=7168 diff={err}"
    print(f"M={m}: {ran}; plan {d.as_dict()['dispatch']}")
