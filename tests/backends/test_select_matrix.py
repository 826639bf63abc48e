"""The precedence matrix of the selection policy (docs/policy.md), cell by cell, against an oracle written from the
precedence table (not from the code): arch x DeepGEMM present/absent x guarded/unguarded model x
BLOCKFP8_USE_DEEP_GEMM unset/0/1 x config.use_deep_gemm None/True/False x dense/MoE. On CPU: the arch is simulated,
DeepGEMM is a fake module."""

from __future__ import annotations

import itertools
import logging

import pytest

from blockfp8 import platform as platform_mod
from blockfp8.backends import select
from blockfp8.backends.base import BackendId, GemmProblem, ScaleFmt, ScaleLayout
from blockfp8.config import BlockFP8Config
from tests import fake_deep_gemm

ARCHS = (None, "sm_89", "sm_90", "sm_100", "sm_120")  # None: this CPU, no GPU simulated
GUARDED, UNGUARDED = "qwen3_5_text", "llama"
# What the default order gives once DeepGEMM is out of the picture, per arch (docs/policy.md, "default order").
FALLBACK = {None: "reference", "sm_89": "triton", "sm_90": "scaled_mm", "sm_100": "triton", "sm_120": "triton"}
# MoE: after DeepGEMM a backend with a grouped kernel comes first, so Hopper's MoE fallback is Triton's fused MoE.
FALLBACK_MOE = {**FALLBACK, "sm_90": "triton"}
DEEP_GEMM_ARCHS = ("sm_90", "sm_100")
UE8M0_ONLY_ARCHS = ("sm_100", "sm_120")  # where the guard's known-bad list applies (guard.json)

CELLS = list(itertools.product(ARCHS, (True, False), (GUARDED, UNGUARDED), (None, "0", "1"), (None, True, False),
                               ("linear", "moe")))


def problem_for(kind: str) -> GemmProblem:
    return GemmProblem(n=7168, k=7168, grouped=kind == "moe", num_experts=8 if kind == "moe" else 1)


def expected(arch, dg_present, model_type, env, cfg, kind):
    """The precedence table: config > env explicitly set > accuracy guard > default order.
    Returns (backend, source, warnings), each warning a tuple of fragments it must contain, or an exception type."""
    env_value = None if env is None else env == "1"
    request, request_source = (cfg, "config") if cfg is not None else (env_value, "env")
    dg_usable = dg_present and arch in DEEP_GEMM_ARCHS
    warnings = []
    if cfg is not None and env_value is not None and cfg != env_value:
        warnings.append((f"BLOCKFP8_USE_DEEP_GEMM={env} is ignored for {kind} layers: "
                         f"config.use_deep_gemm={cfg} takes precedence",))
    guard_would_act = model_type == GUARDED and arch in UE8M0_ONLY_ARCHS
    fallback = (FALLBACK_MOE if kind == "moe" else FALLBACK)[arch]
    if request is True:
        if not dg_usable:
            return select.BackendUnavailableError
        if guard_would_act:
            setting = "config.use_deep_gemm=True" if cfg is not None else "BLOCKFP8_USE_DEEP_GEMM=1"
            warnings.append((f"DeepGEMM forced on for {kind} layers of model_type={model_type} by {setting} despite "
                             f"a known accuracy risk", "UE8M0"))
        return "deepgemm", request_source, warnings
    if request is False:
        return fallback, request_source if dg_usable else "default", warnings
    if dg_usable and guard_would_act:
        knob = "BLOCKFP8_USE_DEEP_GEMM=1 or use_deep_gemm" if kind == "linear" else \
            "BLOCKFP8_MOE_USE_DEEP_GEMM=1 or moe_use_deep_gemm"
        warnings.append((f"DeepGEMM auto-disabled for {kind} layers of model_type={model_type} on {arch}: its kernel "
                         f"there takes only UE8M0 (power-of-two) scales, known to lose accuracy for this model",
                         f"Selected {fallback} with float32 scales instead. Set {knob}=True to force DeepGEMM."))
        return fallback, "guard", warnings
    return ("deepgemm" if dg_usable else fallback), "default", warnings


@pytest.fixture
def deep_gemm_state(monkeypatch):
    def set_state(present: bool):
        if present:
            fake_deep_gemm.install(monkeypatch)
        else:
            fake_deep_gemm.hide(monkeypatch)
    return set_state


def _cpu_platform():
    plat = platform_mod.detect()
    if plat.capability is not None:
        pytest.skip("the CPU column needs a machine without a GPU")
    return plat


@pytest.mark.parametrize("arch,dg_present,model_type,env,cfg,kind", CELLS,
                         ids=[f"{a or 'cpu'}-dg{'+' if p else '-'}-{m}-env{e or 'unset'}-cfg{c}-{k}"
                              for a, p, m, e, c, k in CELLS])
def test_precedence_cell(arch, dg_present, model_type, env, cfg, kind, deep_gemm_state, monkeypatch, caplog):
    deep_gemm_state(dg_present)
    for name in ("BLOCKFP8_USE_DEEP_GEMM", "BLOCKFP8_MOE_USE_DEEP_GEMM", "BLOCKFP8_GEMM_BACKEND",
                 "BLOCKFP8_DISABLED_BACKENDS", "BLOCKFP8_ARCH"):
        monkeypatch.delenv(name, raising=False)
    if env is not None:
        monkeypatch.setenv("BLOCKFP8_USE_DEEP_GEMM", env)
    plat = platform_mod.detect(arch) if arch else _cpu_platform()
    config = BlockFP8Config(model_type=model_type, use_deep_gemm=cfg)
    want = expected(arch, dg_present, model_type, env, cfg, kind)
    if isinstance(want, type):
        with pytest.raises(want, match="deepgemm .* cannot be used"):
            select.resolve(problem_for(kind), config, plat, kind=kind)
        return
    backend, source, want_warnings = want
    decision = select.resolve(problem_for(kind), config, plat, kind=kind)
    case = f"arch={arch} dg={dg_present} model={model_type} env={env} cfg={cfg} kind={kind}"
    assert (str(decision.backend), decision.source) == (backend, source), case
    assert decision.use_deep_gemm == (backend == "deepgemm"), case
    assert len(decision.warnings) == len(want_warnings), f"{case}: {decision.warnings}"
    for fragments, actual in zip(want_warnings, decision.warnings, strict=True):
        for fragment in fragments:
            assert fragment in actual, f"{case}: warning {actual!r} lacks {fragment!r}"
    if not dg_present or arch not in DEEP_GEMM_ARCHS:  # nothing to disable: not a word about the guard
        assert "auto-disabled" not in " ".join(decision.warnings), case
        assert "guard" not in " ".join(decision.reasons), case

    # The scale format follows the chosen kernel: UE8M0 (packed) only for DeepGEMM on family 100.
    ue8m0 = backend == "deepgemm" and arch == "sm_100"
    assert decision.act_scale_fmt is (ScaleFmt.UE8M0 if ue8m0 else ScaleFmt.FLOAT32), case
    assert decision.requant_weight_ue8m0 == ue8m0, case
    assert (decision.act_scale_layout is ScaleLayout.PACKED_UE8M0) == ue8m0, case
    assert decision.candidates[0] is decision.backend, case
    assert decision.simulated == (arch is not None), case

    # Logged once each, however many layers act on the same decision.
    caplog.set_level(logging.WARNING, logger="blockfp8")
    for _ in range(3):
        select.log_decision(decision)
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sorted(logged) == sorted(decision.warnings), case


def test_matrix_covers_every_combination():
    assert len(CELLS) == 5 * 2 * 2 * 3 * 3 * 2
    assert {c[0] for c in CELLS} == set(ARCHS) and {c[5] for c in CELLS} == {"linear", "moe"}


@pytest.mark.parametrize("arch", DEEP_GEMM_ARCHS)
def test_dense_and_moe_agree_unless_told_otherwise(arch, monkeypatch):
    """Same config and env -> the same DeepGEMM answer, source and scale format for dense and MoE; only the MoE knob
    makes them differ. (Without DeepGEMM the MoE fallback may be another backend: a grouped kernel first.)"""
    fake_deep_gemm.install(monkeypatch)
    plat = platform_mod.detect(arch)
    for model_type, env in itertools.product((GUARDED, UNGUARDED), (None, "0", "1")):
        monkeypatch.delenv("BLOCKFP8_USE_DEEP_GEMM", raising=False)
        if env is not None:
            monkeypatch.setenv("BLOCKFP8_USE_DEEP_GEMM", env)
        config = BlockFP8Config(model_type=model_type)
        dense = select.resolve(problem_for("linear"), config, plat, kind="linear")
        moe = select.resolve(problem_for("moe"), config, plat, kind="moe")
        assert (dense.use_deep_gemm, dense.source, dense.act_scale_fmt) == \
            (moe.use_deep_gemm, moe.source, moe.act_scale_fmt), f"model={model_type} env={env}"
    monkeypatch.setenv("BLOCKFP8_USE_DEEP_GEMM", "0")
    monkeypatch.setenv("BLOCKFP8_MOE_USE_DEEP_GEMM", "1")
    config = BlockFP8Config(model_type=GUARDED)
    assert select.resolve(problem_for("linear"), config, plat).backend is not BackendId.DEEPGEMM
    moe = select.resolve(problem_for("moe"), config, plat, kind="moe")
    assert (moe.backend, moe.source) == (BackendId.DEEPGEMM, "env")
