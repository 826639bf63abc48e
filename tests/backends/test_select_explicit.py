"""Explicit choices, the disabled list, scale formats, shape fallbacks, errors, and properties of every decision."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blockfp8 import platform as platform_mod
from blockfp8.backends import select
from blockfp8.backends.base import BackendId, Decision, GemmProblem, ScaleFmt, ScaleLayout
from blockfp8.config import BlockFP8Config
from blockfp8.envs import EnvError
from blockfp8.quant import layouts
from tests import fake_deep_gemm

DENSE = GemmProblem(n=7168, k=7168)
ENV_VARS = ("BLOCKFP8_USE_DEEP_GEMM", "BLOCKFP8_MOE_USE_DEEP_GEMM", "BLOCKFP8_GEMM_BACKEND",
            "BLOCKFP8_DISABLED_BACKENDS", "BLOCKFP8_ARCH")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def with_deep_gemm(monkeypatch):
    return fake_deep_gemm.install(monkeypatch)


def test_public_api_signatures():
    decision = select.resolve(DENSE, None, platform_mod.detect("sm_89"), kind="linear")
    assert isinstance(decision, Decision) and decision.backend is BackendId.TRITON
    assert select.get_backend("reference") is select.get_backend(BackendId.REFERENCE)  # built once
    with pytest.raises(ValueError, match="names no backend"):
        select.get_backend("auto")
    with pytest.raises(ValueError, match="valid values: auto, deepgemm, scaled_mm, cute, triton, reference"):
        select.get_backend("cutlass")
    with pytest.raises(ValueError, match="kind='dense' is not valid; valid values: linear, moe"):
        select.resolve(DENSE, kind="dense")
    with pytest.raises(ValueError, match="needs a grouped problem"):
        select.resolve(DENSE, kind="moe")
    with pytest.raises(ValueError, match=r"problem.n=0 must be a positive integer"):
        select.resolve(GemmProblem(0, 128))


def test_cpu_platform_supports_only_reference():
    plat = platform_mod.detect()
    if plat.capability is not None:
        pytest.skip("needs a machine without a GPU")
    decision = select.resolve(DENSE, None, plat)
    assert (decision.backend, decision.candidates, decision.simulated) == (BackendId.REFERENCE,
                                                                           (BackendId.REFERENCE,), False)
    for backend in ("deepgemm", "scaled_mm", "triton"):
        assert f"{backend}: skipped: no CUDA GPU (set BLOCKFP8_ARCH to plan for one)" in decision.reasons


def test_blockfp8_arch_env_plans_for_that_gpu(monkeypatch, with_deep_gemm):
    monkeypatch.setenv("BLOCKFP8_ARCH", "sm_90a")
    decision = select.resolve(DENSE)  # platform detected from the environment
    assert (decision.backend, decision.arch, decision.simulated) == (BackendId.DEEPGEMM, "sm_90", True)


@pytest.mark.parametrize("source", ["config", "env"])
@pytest.mark.parametrize("backend,arch", [("triton", "sm_90"), ("reference", "sm_100"), ("scaled_mm", "sm_90")])
def test_named_backend_is_honoured(source, backend, arch, monkeypatch, with_deep_gemm):
    config = BlockFP8Config(linear_backend=backend) if source == "config" else None
    if source == "env":
        monkeypatch.setenv("BLOCKFP8_GEMM_BACKEND", backend)
    decision = select.resolve(DENSE, config, platform_mod.detect(arch))
    assert (str(decision.backend), decision.source, decision.candidates) == (backend, source, (decision.backend,))


@pytest.mark.parametrize("setting,arch,problem,reason", [
    ({"linear_backend": "scaled_mm"}, "sm_100", DENSE, "cuBLASLt block scaling is SM90 only, this is sm_100"),
    ({"linear_backend": "triton"}, "sm_80", DENSE, r"needs FP8 tensor cores \(SM >= 8.9\), this is sm_80"),
    ({"linear_backend": "deepgemm"}, "sm_90", GemmProblem(100, 7168), "N % 64 == 0"),
    ({"use_deep_gemm": True, "scale_fmt": "float32"}, "sm_100", DENSE,
     "takes only ue8m0 scales on sm_100; config.scale_fmt=float32 was asked"),
    ({"use_deep_gemm": True}, "sm_89", DENSE, "needs SM90 or SM100/SM103, this is sm_89"),
])
def test_an_explicit_choice_that_cannot_run_raises_with_the_reason(setting, arch, problem, reason, with_deep_gemm):
    with pytest.raises(select.BackendUnavailableError, match=reason):
        select.resolve(problem, BlockFP8Config(**setting), platform_mod.detect(arch))


def test_forced_deep_gemm_without_deep_gemm_names_it(monkeypatch):
    fake_deep_gemm.hide(monkeypatch)
    monkeypatch.setenv("BLOCKFP8_USE_DEEP_GEMM", "1")
    with pytest.raises(select.BackendUnavailableError, match=r"BLOCKFP8_USE_DEEP_GEMM=1.*deep_gemm not installed"):
        select.resolve(DENSE, None, platform_mod.detect("sm_100"))


def test_use_deep_gemm_true_lets_an_unfit_shape_fall_back(with_deep_gemm):
    decision = select.resolve(GemmProblem(100, 7168), BlockFP8Config(use_deep_gemm=True), platform_mod.detect("sm_90"))
    assert (decision.backend, decision.source) == (BackendId.TRITON, "default")  # N=100: not scaled_mm (N % 16) either
    assert any("deepgemm: cannot implement this shape" in r for r in decision.reasons)


def test_nothing_fits_raises_one_error_listing_every_reason():
    odd = GemmProblem(7168, 7168, out_dtype="int8")
    with pytest.raises(select.NoBackendError) as info:
        select.resolve(odd, None, platform_mod.detect("sm_90"))
    message = str(info.value)
    for backend in ("deepgemm", "scaled_mm", "triton", "reference"):
        assert f"{backend}: skipped:" in message
    assert "output dtype int8" in message


def test_disabled_backends_apply_to_automatic_choice_only(monkeypatch, with_deep_gemm):
    monkeypatch.setenv("BLOCKFP8_DISABLED_BACKENDS", "deepgemm, scaled_mm")
    plat = platform_mod.detect("sm_90")
    decision = select.resolve(DENSE, None, plat)
    assert (decision.backend, decision.source) == (BackendId.TRITON, "env")
    assert "deepgemm: skipped: disabled by BLOCKFP8_DISABLED_BACKENDS" in decision.reasons
    assert BackendId.SCALED_MM not in decision.candidates
    explicit = select.resolve(DENSE, BlockFP8Config(linear_backend="scaled_mm"), plat)
    assert explicit.backend is BackendId.SCALED_MM


def test_gemm_backend_env_is_for_dense_layers_only(monkeypatch, with_deep_gemm):
    monkeypatch.setenv("BLOCKFP8_GEMM_BACKEND", "triton")
    plat = platform_mod.detect("sm_90")
    moe = select.resolve(GemmProblem(7168, 7168, grouped=True), None, plat, kind="moe")
    assert select.resolve(DENSE, None, plat).backend is BackendId.TRITON and moe.backend is BackendId.DEEPGEMM


def test_config_overrules_env_and_says_so(monkeypatch, with_deep_gemm):
    monkeypatch.setenv("BLOCKFP8_GEMM_BACKEND", "deepgemm")
    decision = select.resolve(DENSE, BlockFP8Config(use_deep_gemm=False), platform_mod.detect("sm_90"))
    assert (decision.backend, decision.source) == (BackendId.SCALED_MM, "config")
    assert decision.warnings == ("BLOCKFP8_GEMM_BACKEND=deepgemm is ignored for linear layers: "
                                 "config.use_deep_gemm=False takes precedence",)
    monkeypatch.setenv("BLOCKFP8_GEMM_BACKEND", "triton")  # compatible with "DeepGEMM off": both stand, no warning
    decision = select.resolve(DENSE, BlockFP8Config(use_deep_gemm=False), platform_mod.detect("sm_90"))
    assert (decision.backend, decision.source, decision.warnings) == (BackendId.TRITON, "env", ())


def test_moe_config_knob_outranks_the_global_one(with_deep_gemm):
    plat = platform_mod.detect("sm_90")
    config = BlockFP8Config(use_deep_gemm=False, moe_use_deep_gemm=True)
    assert select.resolve(DENSE, config, plat).backend is BackendId.SCALED_MM
    moe = select.resolve(GemmProblem(7168, 7168, grouped=True), config, plat, kind="moe")
    assert (moe.backend, moe.source) == (BackendId.DEEPGEMM, "config")


@pytest.mark.parametrize("asked,ckpt,arch,fmt,requant,weight_fmt", [
    (None, "float32", "sm_90", "float32", False, "float32"),   # Hopper DeepGEMM: float32 unless asked
    ("ue8m0", "float32", "sm_90", "ue8m0", True, "ue8m0"),
    (None, "float32", "sm_100", "ue8m0", True, "ue8m0"),       # family 100: UE8M0 is the only choice
    (None, "ue8m0", "sm_100", "ue8m0", False, "ue8m0"),        # already UE8M0 on disk: no second rounding
])
def test_scale_format_and_requant(asked, ckpt, arch, fmt, requant, weight_fmt, with_deep_gemm):
    problem = GemmProblem(7168, 7168, checkpoint_scale_fmt=ScaleFmt(ckpt))
    decision = select.resolve(problem, BlockFP8Config(scale_fmt=asked, model_type="llama"), platform_mod.detect(arch))
    assert decision.backend is BackendId.DEEPGEMM
    assert (str(decision.act_scale_fmt), decision.requant_weight_ue8m0, str(decision.weight_scale_fmt)) == \
        (fmt, requant, weight_fmt)


def test_invalid_env_values_raise_listing_valid_ones(monkeypatch):
    monkeypatch.setenv("BLOCKFP8_USE_DEEP_GEMM", "yes")
    with pytest.raises(EnvError, match=r"BLOCKFP8_USE_DEEP_GEMM='yes' is not valid; valid values: 0, 1"):
        select.resolve(DENSE, None, platform_mod.detect("sm_90"))
    monkeypatch.delenv("BLOCKFP8_USE_DEEP_GEMM")
    monkeypatch.setenv("BLOCKFP8_DISABLED_BACKENDS", "triton,cutlass")
    with pytest.raises(EnvError, match="'cutlass' not valid; valid values: a comma list of deepgemm, scaled_mm"):
        select.resolve(DENSE, None, platform_mod.detect("sm_90"))


# ---------------------------------------------------------------------------------------------------- properties

ARCHS = ("sm_80", "sm_89", "sm_90", "sm_100", "sm_103", "sm_120")
configs = st.builds(
    BlockFP8Config,
    scale_fmt=st.sampled_from([None, "float32", "ue8m0"]),
    use_deep_gemm=st.sampled_from([None, True, False]),
    moe_use_deep_gemm=st.sampled_from([None, True, False]),
    model_type=st.sampled_from([None, "qwen3_5_text", "qwen3_5_moe_text", "llama"]),
)
problems = st.builds(GemmProblem, n=st.sampled_from([64, 100, 2112, 7168]), k=st.sampled_from([96, 128, 7168]),
                     checkpoint_scale_fmt=st.sampled_from(list(ScaleFmt)))


@given(config=configs, problem=problems, arch=st.sampled_from(ARCHS), kind=st.sampled_from(["linear", "moe"]))
def test_every_decision_is_self_consistent(config, problem, arch, kind):
    """Invariants that hold for any config/shape/GPU (DeepGEMM present): the record never contradicts itself."""
    import sys

    sys.modules.pop("deep_gemm", None)
    sys.path.insert(0, str(fake_deep_gemm.FAKE_ROOT))
    try:
        if kind == "moe":
            problem = GemmProblem(problem.n, problem.k, checkpoint_scale_fmt=problem.checkpoint_scale_fmt, grouped=True)
        plat = platform_mod.detect(arch)
        assert plat.has("deep_gemm")
        try:
            d = select.resolve(problem, config, plat, kind=kind)
        except select.BackendUnavailableError as exc:
            assert config.deep_gemm_knob(kind)[0] is True, exc  # only a forced DeepGEMM can be refused here
            return
    finally:
        sys.path.remove(str(fake_deep_gemm.FAKE_ROOT))
        sys.modules.pop("deep_gemm", None)
    assert d.use_deep_gemm == (d.backend is BackendId.DEEPGEMM)
    assert d.candidates[0] is d.backend and len(set(d.candidates)) == len(d.candidates)
    assert d.requant_weight_ue8m0 == (d.act_scale_fmt is ScaleFmt.UE8M0
                                      and problem.checkpoint_scale_fmt is ScaleFmt.FLOAT32)
    packed = d.backend is BackendId.DEEPGEMM and arch in ("sm_100", "sm_103")
    assert (d.act_scale_layout is ScaleLayout.PACKED_UE8M0) == packed
    if packed:
        assert d.act_scale_fmt is ScaleFmt.UE8M0
    if config.scale_fmt is not None:
        assert str(d.act_scale_fmt) == config.scale_fmt
    if config.deep_gemm_knob(kind)[0] is False:
        assert d.backend is not BackendId.DEEPGEMM
    for w in d.warnings:  # a warning that names a selected backend names the real one
        if "Selected " in w:
            assert f"Selected {d.backend} " in w
    order = [b for b in select.preference_order(kind) if b in d.candidates]
    assert list(d.candidates) == order


@pytest.mark.parametrize("arch,backend", [("sm_90", "deepgemm"), ("sm_100", "deepgemm"), ("sm_90", "scaled_mm")])
def test_activation_scales_come_in_the_decision_format_and_layout(arch, backend, with_deep_gemm):
    """Each GPU backend's quantize_act gives the reference's values in its kernel's layout (checkable on CPU)."""
    import torch

    from blockfp8.quant import reference as ref

    decision = select.resolve(GemmProblem(256, 512), BlockFP8Config(linear_backend=backend),
                              platform_mod.detect(arch))
    x = torch.randn(3, 512)
    x_q, scale = select.get_backend(backend).quantize_act(x, decision, 128)
    want_q, want_scale = ref.quantize_act(x, 128, str(decision.act_scale_fmt))
    assert torch.equal(x_q.view(torch.uint8), want_q.view(torch.uint8))
    if decision.act_scale_layout is ScaleLayout.PACKED_UE8M0:
        assert scale.dtype == torch.int32 and torch.equal(layouts.unpack_ue8m0(scale, 4), want_scale)
    else:
        assert decision.act_scale_layout is ScaleLayout.MN_MAJOR
        assert scale.stride() == (1, 4) and torch.equal(scale, want_scale)  # M=3 padded to 4: TMA-aligned


def test_deep_gemm_sm100_weight_scales_are_requantized_and_packed(with_deep_gemm):
    import torch

    from blockfp8.quant import reference as ref

    decision = select.resolve(GemmProblem(256, 512), None, platform_mod.detect("sm_100"))
    w_q, w_s = ref.quantize_weight(torch.randn(256, 512))
    prepared = select.get_backend("deepgemm").prepare_weight(w_q, w_s, decision, (128, 128))
    want_q, want_s = ref.requant_to_ue8m0(w_q, w_s)
    assert torch.equal(prepared.weight.view(torch.uint8), want_q.view(torch.uint8))
    assert torch.equal(layouts.unpack_ue8m0(prepared.scale, 4), want_s.repeat_interleave(128, 0))
    assert prepared.checkpoint_weight is w_q and torch.equal(prepared.checkpoint_scale, w_s)  # kept for another backend


@pytest.mark.parametrize("scale_fmt", [None, "ue8m0"])
def test_reference_backend_end_to_end(scale_fmt):
    """The CPU path the layers use: requant only when the decision asks, checkpoint kept, output = reference GEMM."""
    import torch

    from blockfp8.quant import reference as ref

    decision = select.resolve(GemmProblem(200, 300), BlockFP8Config(scale_fmt=scale_fmt), platform_mod.detect())
    if decision.backend is not BackendId.REFERENCE:
        pytest.skip("needs a machine without a GPU")
    backend = select.get_backend(decision.backend)
    w_q, w_s = ref.quantize_weight(torch.randn(200, 300))
    prepared = backend.prepare_weight(w_q, w_s, decision, (128, 128))
    assert decision.requant_weight_ue8m0 == (scale_fmt == "ue8m0")
    assert torch.equal(prepared.weight.view(torch.uint8), w_q.view(torch.uint8)) != decision.requant_weight_ue8m0
    assert bool(ref.is_power_of_two(prepared.scale).all()) == decision.requant_weight_ue8m0
    assert prepared.checkpoint_weight is w_q and torch.equal(prepared.checkpoint_scale, w_s)
    x = torch.randn(5, 300)
    x_q, x_s = backend.quantize_act(x, decision, 128)
    assert bool(ref.is_power_of_two(x_s).all()) == (scale_fmt == "ue8m0")
    out = backend.gemm(x_q, x_s, prepared, torch.bfloat16)
    assert torch.equal(out, ref.gemm_reference(x_q, x_s, prepared.weight, prepared.scale, (128, 128), torch.bfloat16))


def test_within_a_level_the_named_backend_beats_the_deep_gemm_switch(monkeypatch, with_deep_gemm):
    plat = platform_mod.detect("sm_90")
    moe_problem = GemmProblem(7168, 7168, grouped=True)
    config = BlockFP8Config(linear_backend="triton", use_deep_gemm=True)
    dense = select.resolve(DENSE, config, plat)
    assert dense.backend is BackendId.TRITON
    assert "policy: config.use_deep_gemm=True does not apply here: config.linear_backend=triton is more specific" \
        in dense.reasons
    assert select.resolve(moe_problem, config, plat, kind="moe").backend is BackendId.DEEPGEMM
    monkeypatch.setenv("BLOCKFP8_GEMM_BACKEND", "triton")
    monkeypatch.setenv("BLOCKFP8_USE_DEEP_GEMM", "1")
    assert select.resolve(DENSE, None, plat).backend is BackendId.TRITON
    assert select.resolve(moe_problem, None, plat, kind="moe").source == "env"
