"""backends.explain: the explanation is the policy's own decisions (not a re-derivation), errors fail the plan only
for layer kinds the model has, warnings are counted once, and the audit-verdict selection of `check`."""

from __future__ import annotations

import pytest

from blockfp8 import platform as platform_mod
from blockfp8.backends import explain as ex
from blockfp8.backends import select
from blockfp8.backends.base import GemmProblem
from blockfp8.config import AuditVerdict, BlockFP8Config
from tests import fake_deep_gemm

ENV_VARS = ("BLOCKFP8_USE_DEEP_GEMM", "BLOCKFP8_MOE_USE_DEEP_GEMM", "BLOCKFP8_GEMM_BACKEND",
            "BLOCKFP8_DISABLED_BACKENDS", "BLOCKFP8_ARCH")
GUARDED = "qwen3_5_text"  # in the shipped known-bad list for Blackwell


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def test_each_kind_is_the_policys_decision(monkeypatch):
    fake_deep_gemm.install(monkeypatch)
    config, plat = BlockFP8Config(model_type=GUARDED), platform_mod.detect("sm_100")
    e = ex.explain(config, plat, 2048, 1536, moe=True, num_experts=16)
    out = e.as_dict()
    for kind in ("linear", "moe"):
        problem = GemmProblem(2048, 1536, grouped=kind == "moe", num_experts=16 if kind == "moe" else 1)
        assert out[kind] == select.resolve(problem, config, plat, kind=kind).as_dict(), kind
    assert out["problem"] == {"n": 2048, "k": 1536, "block_size": [128, 128], "num_experts": 16}
    assert out["source"] == {"linear": "guard", "moe": "guard"} and out["plan_only"] is True
    assert out["reasons"]["linear"] == out["linear"]["reasons"] and not e.failed
    assert len(out["warnings"]) == 2 and e.warnings() == out["warnings"]


def test_moe_warnings_and_errors_count_only_with_moe_layers(monkeypatch):
    fake_deep_gemm.hide(monkeypatch)
    plat = platform_mod.detect("sm_100")
    config = BlockFP8Config(moe_use_deep_gemm=True)  # MoE layers ask for a backend that is not installed
    dense = ex.explain(config, plat, 7168, 7168, moe=False)
    assert "moe" in dense.errors and "deep_gemm not installed" in dense.errors["moe"]
    assert not dense.failed and dense.as_dict()["moe"] == {"kind": "moe", "error": dense.errors["moe"]}
    assert dense.as_dict()["reasons"]["moe"] == [dense.errors["moe"]]
    assert ex.explain(config, plat, 7168, 7168, moe=True).failed
    assert ex.explain(BlockFP8Config(use_deep_gemm=True), plat, 7168, 7168).failed  # dense layers always count

    fake_deep_gemm.install(monkeypatch)
    plat = platform_mod.detect("sm_100")  # the platform records which libraries are installed
    guarded = BlockFP8Config(model_type=GUARDED)
    assert len(ex.explain(guarded, plat, 7168, 7168, moe=False).warnings()) == 1
    assert len(ex.explain(guarded, plat, 7168, 7168, moe=True).warnings()) == 2


def test_env_and_audit_are_part_of_the_explanation(monkeypatch):
    monkeypatch.setenv("BLOCKFP8_ARCH", "sm_90")
    audit = AuditVerdict(ue8m0_ok=False, evidence="measured: 1.8 bit lost", model_type="llama")
    e = ex.explain(BlockFP8Config(model_type="llama", audit=audit), platform_mod.detect("sm_90"), 512, 256)
    out = e.as_dict()
    assert out["env"] == {"BLOCKFP8_ARCH": "sm_90"}
    assert out["audit"] == {"ue8m0_ok": False, "model_type": "llama", "evidence": "measured: 1.8 bit lost"}
    text = ex.render_text(e)
    assert "env         BLOCKFP8_ARCH=sm_90" in text.splitlines()
    assert "audit       UE8M0 harmful: measured: 1.8 bit lost" in text.splitlines()
    assert "layer       N=512 K=256 block=[128, 128]" in text.splitlines()


def test_render_text_shows_errors_and_notes(monkeypatch):
    fake_deep_gemm.hide(monkeypatch)
    e = ex.explain(BlockFP8Config(moe_use_deep_gemm=True), platform_mod.detect("sm_100"), 7168, 7168)
    lines = ex.render_text(e).splitlines()
    assert lines[0].startswith("platform    ") and lines[0].endswith("  (a plan for that GPU, not this machine)")
    assert lines[1] == "model_type  (unknown: the accuracy guard cannot match it)"
    start = lines.index("MoE layers: ERROR  (no MoE layers declared: shown for reference)")
    assert lines[start + 1] == f"  {e.errors['moe']}"
    dense = next(line for line in lines if line.startswith("dense layers: "))
    assert dense == "dense layers: triton, float32 activation scales, float32 weight scales, source: default"
    assert lines[-1] == "no warnings would be logged"


@pytest.mark.parametrize("ok,blackwell_guard", [
    (False, "DeepGEMM kept off where installed (its kernel takes only UE8M0 here)"),
    (True, "DeepGEMM allowed with UE8M0 scales"),
])
def test_selection_for_verdict(ok, blackwell_guard, monkeypatch):
    fake_deep_gemm.hide(monkeypatch)
    audit = AuditVerdict(ue8m0_ok=ok, evidence="a measurement", model_type="llama")
    selections = ex.selection_for_verdict(576, 1536, (128, 128), audit)
    assert [(s.label, s.arch) for s in selections] == list(ex.PLAN_ARCHES)
    hopper, blackwell = selections
    assert hopper.guard == "DeepGEMM takes float32 scales on sm_90" and blackwell.guard == blackwell_guard
    assert blackwell.pick == "triton with float32 weight / float32 activation scales"
    lines = ex.render_selection("model.layers.0.mlp.up_proj", 576, 1536, selections)
    assert lines[0] == "what blockfp8 would select for model.layers.0.mlp.up_proj (N=576, K=1536) with this verdict:"
    assert lines[2] == f"  Blackwell sm_100 : {blackwell.pick}; guard: {blackwell_guard}"


def test_selection_when_nothing_runs(monkeypatch):
    monkeypatch.setenv("BLOCKFP8_DISABLED_BACKENDS", "triton,reference,scaled_mm,deepgemm")
    audit = AuditVerdict(ue8m0_ok=True, evidence="a measurement")
    (only,) = ex.selection_for_verdict(512, 512, (128, 128), audit, arches=(("Ada", "sm_89"),))
    assert only.pick.startswith("nothing runs here (") and "\n" not in only.pick
