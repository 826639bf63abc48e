"""One regression test per defect that serving engines' UE8M0 guard has shipped with (vLLM's model-type list and its
review), each under a header saying what must hold instead."""

from __future__ import annotations

import logging

import pytest
import torch

from blockfp8 import platform as platform_mod
from blockfp8.backends import guard, select
from blockfp8.backends.base import BackendId, GemmProblem, ScaleFmt, ScaleLayout
from blockfp8.config import AuditVerdict, BlockFP8Config
from blockfp8.quant import reference as ref
from tests import fake_deep_gemm

GUARDED = "qwen3_5_text"
DENSE = GemmProblem(n=7168, k=7168)
MOE = GemmProblem(n=7168, k=7168, grouped=True, num_experts=8)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("BLOCKFP8_USE_DEEP_GEMM", "BLOCKFP8_MOE_USE_DEEP_GEMM", "BLOCKFP8_GEMM_BACKEND",
                 "BLOCKFP8_DISABLED_BACKENDS", "BLOCKFP8_ARCH"):
        monkeypatch.delenv(name, raising=False)


def warnings_logged(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("blockfp8") and r.levelno == logging.WARNING]


# --- the environment can force DeepGEMM back on for a guarded model --------------------------------------------------


@pytest.mark.parametrize("kind,problem,env", [("linear", DENSE, "BLOCKFP8_USE_DEEP_GEMM"),
                                              ("moe", MOE, "BLOCKFP8_USE_DEEP_GEMM"),
                                              ("moe", MOE, "BLOCKFP8_MOE_USE_DEEP_GEMM")])
def test_defect1_env_1_forces_deep_gemm_back_on_for_a_guarded_model(kind, problem, env, monkeypatch, caplog):
    fake_deep_gemm.install(monkeypatch)
    monkeypatch.setenv(env, "1")
    plat = platform_mod.detect("sm_100")
    caplog.set_level(logging.WARNING, logger="blockfp8")
    for _layer in range(4):  # every layer resolves and logs; the warning appears once
        decision = select.resolve(problem, BlockFP8Config(model_type=GUARDED), plat, kind=kind)
        select.log_decision(decision)
    assert (decision.backend, decision.source, decision.use_deep_gemm) == (BackendId.DEEPGEMM, "env", True)
    assert decision.requant_weight_ue8m0 and decision.act_scale_fmt is ScaleFmt.UE8M0
    logged = warnings_logged(caplog)
    assert len(logged) == 1, logged
    assert f"DeepGEMM forced on for {kind} layers of model_type={GUARDED} by {env}=1 despite a known accuracy " \
           "risk: on sm_100 its kernel takes only UE8M0 (power-of-two) scales" in logged[0]


def test_defect1_config_true_also_forces_and_beats_env_0(monkeypatch):
    fake_deep_gemm.install(monkeypatch)
    monkeypatch.setenv("BLOCKFP8_USE_DEEP_GEMM", "0")
    decision = select.resolve(DENSE, BlockFP8Config(model_type=GUARDED, use_deep_gemm=True),
                              platform_mod.detect("sm_100"))
    assert (decision.backend, decision.source) == (BackendId.DEEPGEMM, "config")
    assert any("BLOCKFP8_USE_DEEP_GEMM=0 is ignored" in w for w in decision.warnings)
    assert any("forced on" in w for w in decision.warnings)


# --- no "auto-disabled" warning where DeepGEMM was never available ---------------------------------------------------


@pytest.mark.parametrize("kind,problem", [("linear", DENSE), ("moe", MOE)])
def test_defect2_no_auto_disabled_message_when_deep_gemm_is_not_installed(kind, problem, monkeypatch, caplog):
    fake_deep_gemm.hide(monkeypatch)
    caplog.set_level(logging.DEBUG, logger="blockfp8")
    decision = select.resolve(problem, BlockFP8Config(model_type=GUARDED), platform_mod.detect("sm_100"), kind=kind)
    select.log_decision(decision)
    assert (decision.backend, decision.source) == (BackendId.TRITON, "default")
    assert "deepgemm: skipped: deep_gemm not installed" in decision.reasons
    assert decision.warnings == () and warnings_logged(caplog) == []
    assert not any("guard" in r or "auto-disabled" in r.lower() for r in decision.reasons)


def test_defect2_no_guard_message_when_deep_gemm_is_unusable(monkeypatch):
    """Installed but an unusable version (no fp8_gemm_nt), or a family DeepGEMM does not support: same honesty."""
    module = fake_deep_gemm.install(monkeypatch)
    monkeypatch.delattr(module, "fp8_gemm_nt")
    decision = select.resolve(DENSE, BlockFP8Config(model_type=GUARDED), platform_mod.detect("sm_100"))
    assert decision.warnings == () and decision.source == "default"
    assert "deepgemm: skipped: deep_gemm has no fp8_gemm_nt (an unsupported version)" in decision.reasons
    monkeypatch.setattr(module, "fp8_gemm_nt", lambda *a: None, raising=False)
    decision = select.resolve(DENSE, BlockFP8Config(model_type=GUARDED), platform_mod.detect("sm_120"))
    assert decision.warnings == () and decision.source == "default"
    assert "deepgemm: skipped: needs SM90 or SM100/SM103, this is sm_120" in decision.reasons


# --- MoE layers follow the same decision as dense layers (and warmup never touches a kernel that is off) -------------


def test_defect3_moe_layers_follow_the_guard_and_the_global_off_switch(monkeypatch):
    fake_deep_gemm.install(monkeypatch)
    plat = platform_mod.detect("sm_100")
    moe = select.resolve(MOE, BlockFP8Config(model_type=GUARDED), plat, kind="moe")
    assert moe.backend is not BackendId.DEEPGEMM and moe.source == "guard" and not moe.requant_weight_ue8m0
    assert len(moe.warnings) == 1 and "for moe layers" in moe.warnings[0]
    monkeypatch.setenv("BLOCKFP8_USE_DEEP_GEMM", "0")  # off everywhere, for a model the guard does not know
    moe = select.resolve(MOE, BlockFP8Config(model_type="llama"), platform_mod.detect("sm_90"), kind="moe")
    assert moe.backend is BackendId.TRITON and moe.source == "env" and moe.grouped_moe  # Triton's fused MoE


def test_defect3_consumers_never_reach_a_kernel_the_decision_turned_off(monkeypatch):
    """Weight post-processing, activation quantization, the GEMM and a warmup all go through the decision's backend:
    with DeepGEMM guarded off, the (fake) DeepGEMM kernels are never called; with it on, they are."""
    module = fake_deep_gemm.install(monkeypatch)
    monkeypatch.setenv("BLOCKFP8_DISABLED_BACKENDS", "triton")  # land on a backend that runs on this CPU
    plat = platform_mod.detect("sm_100")
    w_q, w_s = ref.quantize_weight(torch.randn(256, 256))
    x = torch.randn(3, 256)
    for kind, problem in (("linear", GemmProblem(256, 256)), ("moe", GemmProblem(256, 256, grouped=True))):
        decision = select.resolve(problem, BlockFP8Config(model_type=GUARDED), plat, kind=kind)
        backend = select.get_backend(decision.backend)
        prepared = backend.prepare_weight(w_q, w_s, decision, (128, 128))
        for m in (1, 3):  # "warmup" over a few M, then the real call
            x_q, x_s = backend.quantize_act(x[:m], decision, 128)
            out = backend.gemm(x_q, x_s, prepared, torch.bfloat16)
        assert out.shape == (3, 256)
        assert decision.backend is BackendId.REFERENCE and module.CALLS == [], (kind, module.CALLS)
    # Positive control: the same path with DeepGEMM decided on does reach DeepGEMM.
    decision = select.resolve(GemmProblem(256, 256), BlockFP8Config(use_deep_gemm=True), plat)
    backend = select.get_backend(decision.backend)
    prepared = backend.prepare_weight(w_q, w_s, decision, (128, 128))
    with pytest.raises(RuntimeError, match="fake deep_gemm"):
        backend.gemm(*ref.quantize_act(x, 128, "ue8m0"), prepared, torch.bfloat16)
    assert module.CALLS == ["fp8_gemm_nt"]


def test_defect3_moe_needs_the_grouped_kernel(monkeypatch):
    module = fake_deep_gemm.install(monkeypatch)
    monkeypatch.delattr(module, "m_grouped_fp8_gemm_nt_contiguous")
    plat = platform_mod.detect("sm_90")
    assert select.resolve(DENSE, None, plat).backend is BackendId.DEEPGEMM
    moe = select.resolve(MOE, None, plat, kind="moe")
    assert moe.backend is BackendId.TRITON  # next in the MoE order: a grouped (fused) kernel before a per-expert loop
    assert any("m_grouped_fp8_gemm_nt_contiguous" in r for r in moe.reasons)


# --- each consumer gets the scale format and layout its own kernel takes ---------------------------------------------


def test_defect4_each_consumer_gets_the_scale_format_its_kernel_needs(monkeypatch):
    fake_deep_gemm.install(monkeypatch)
    plat = platform_mod.detect("sm_100")
    on = select.resolve(DENSE, BlockFP8Config(model_type="llama"), plat)
    assert (on.backend, on.act_scale_fmt, on.act_scale_layout) == \
        (BackendId.DEEPGEMM, ScaleFmt.UE8M0, ScaleLayout.PACKED_UE8M0)
    off = select.resolve(DENSE, BlockFP8Config(model_type=GUARDED), plat)
    assert (off.backend, off.act_scale_fmt, off.act_scale_layout, off.requant_weight_ue8m0) == \
        (BackendId.TRITON, ScaleFmt.FLOAT32, ScaleLayout.ROW_MAJOR, False)
    hopper = select.resolve(DENSE, BlockFP8Config(model_type=GUARDED), platform_mod.detect("sm_90"))
    assert (hopper.backend, hopper.act_scale_fmt, hopper.act_scale_layout) == \
        (BackendId.DEEPGEMM, ScaleFmt.FLOAT32, ScaleLayout.MN_MAJOR)  # Hopper DeepGEMM: float32 first


def test_defect4_a_backend_refuses_a_decision_made_for_another_kernel(monkeypatch):
    """Packed UE8M0 scales meant for DeepGEMM can never reach the fallback: the fallback checks whose decision it is."""
    fake_deep_gemm.install(monkeypatch)
    decision = select.resolve(GemmProblem(256, 256), BlockFP8Config(model_type="llama"), platform_mod.detect("sm_100"))
    assert decision.backend is BackendId.DEEPGEMM
    reference = select.get_backend("reference")
    with pytest.raises(ValueError, match="decision is for backend deepgemm"):
        reference.quantize_act(torch.randn(2, 256), decision, 128)
    w_q, w_s = ref.quantize_weight(torch.randn(256, 256))
    with pytest.raises(ValueError, match="decision is for backend deepgemm"):
        reference.prepare_weight(w_q, w_s, decision, (128, 128))


def test_defect4_candidates_share_the_scale_format_and_get_their_own_layout(monkeypatch):
    fake_deep_gemm.install(monkeypatch)
    plat = platform_mod.detect("sm_90")
    decision = select.resolve(DENSE, None, plat)
    assert decision.candidates == (BackendId.DEEPGEMM, BackendId.SCALED_MM, BackendId.TRITON, BackendId.REFERENCE)
    triton = select.for_candidate(decision, "triton", plat)
    assert (triton.backend, triton.act_scale_fmt, triton.act_scale_layout) == \
        (BackendId.TRITON, ScaleFmt.FLOAT32, ScaleLayout.ROW_MAJOR)
    blackwell = select.resolve(DENSE, None, platform_mod.detect("sm_100"))
    assert blackwell.candidates == (BackendId.DEEPGEMM,)  # nothing else takes its UE8M0-requantized weights
    with pytest.raises(ValueError, match="not a candidate"):
        select.for_candidate(blackwell, "triton", plat)


# --- a measured verdict, not only a hand-kept model-type list, keeps DeepGEMM off ------------------------------------


def test_defect5_a_measured_audit_verdict_guards_a_model_nobody_listed(monkeypatch):
    fake_deep_gemm.install(monkeypatch)
    audit = AuditVerdict(ue8m0_ok=False, evidence="worst layer loses 0.41 bit SNR with UE8M0 (limit 0.25)")
    config = BlockFP8Config(model_type="brand_new_text", audit=audit)
    decision = select.resolve(DENSE, config, platform_mod.detect("sm_100"))
    assert (decision.backend, decision.source) == (BackendId.TRITON, "audit")
    assert len(decision.warnings) == 1
    assert "model_type=brand_new_text" in decision.warnings[0] and audit.evidence in decision.warnings[0]
    assert "measured by the audit" in decision.warnings[0]


def test_defect5_a_measurement_lifts_the_hand_kept_verdict(monkeypatch):
    fake_deep_gemm.install(monkeypatch)
    audit = AuditVerdict(ue8m0_ok=True, evidence="all layers within 0.05 bit")
    decision = select.resolve(DENSE, BlockFP8Config(model_type=GUARDED, audit=audit), platform_mod.detect("sm_100"))
    assert (decision.backend, decision.source, decision.warnings) == (BackendId.DEEPGEMM, "default", ())
    assert any("audit verdict" in r and "UE8M0 acceptable" in r for r in decision.reasons)


def test_defect5_the_known_bad_list_is_data(monkeypatch):
    fake_deep_gemm.install(monkeypatch)
    data = guard.load_guard_data()
    assert set(data.known_bad) == {"qwen3_5_text", "qwen3_5_moe_text"} and data.ue8m0_only_families == {100, 120}
    extended = guard.GuardData(data.ue8m0_only_families, {**data.known_bad, "newly_found_text": "user report"})
    monkeypatch.setattr(guard, "load_guard_data", lambda: extended)
    decision = select.resolve(DENSE, BlockFP8Config(model_type="newly_found_text"), platform_mod.detect("sm_100"))
    assert (decision.backend, decision.source) == (BackendId.TRITON, "guard")


def test_defect5_the_guard_is_about_the_scale_format_not_the_name(monkeypatch):
    """No UE8M0 forced on the user, nothing to guard: Hopper DeepGEMM (float32) and UE8M0 asked for everywhere."""
    fake_deep_gemm.install(monkeypatch)
    hopper = select.resolve(DENSE, BlockFP8Config(model_type=GUARDED), platform_mod.detect("sm_90"))
    assert (hopper.backend, hopper.warnings) == (BackendId.DEEPGEMM, ())
    asked = select.resolve(DENSE, BlockFP8Config(model_type=GUARDED, scale_fmt="ue8m0"), platform_mod.detect("sm_100"))
    assert (asked.backend, asked.warnings, asked.act_scale_fmt) == (BackendId.DEEPGEMM, (), ScaleFmt.UE8M0)
