"""Platform: SM capability parsing, families, the BLOCKFP8_ARCH / --arch override, optional libraries."""

from __future__ import annotations

import pytest

from blockfp8 import platform as platform_mod
from blockfp8.envs import EnvError


@pytest.mark.parametrize("text,cap", [("sm_90", (9, 0)), ("90", (9, 0)), ("9.0", (9, 0)), ("sm_90a", (9, 0)),
                                      ("sm_100a", (10, 0)), ("100", (10, 0)), ("10.3", (10, 3)),
                                      ("sm_103", (10, 3)), ("SM_120", (12, 0)), ("sm_121", (12, 1)),
                                      ("sm89", (8, 9)), ("sm_100f", (10, 0))])
def test_parse_arch(text, cap):
    assert platform_mod.parse_arch(text) == cap


@pytest.mark.parametrize("text", ["hopper", "sm_", "9", "sm_9", "9.10", "", "sm_90b"])
def test_parse_arch_rejects_with_examples(text):
    with pytest.raises(EnvError, match="is not valid"):
        platform_mod.parse_arch(text)


@pytest.mark.parametrize("cap,family", [((9, 0), 90), ((10, 0), 100), ((10, 3), 100), ((12, 0), 120),
                                        ((12, 1), 120), ((8, 9), 89), ((8, 0), 80), (None, None)])
def test_family(cap, family):
    assert platform_mod.family_of(cap) == family


def test_arch_override_is_simulated(monkeypatch):
    monkeypatch.setenv("BLOCKFP8_ARCH", "sm_103")
    plat = platform_mod.detect()
    assert (plat.capability, plat.family, plat.arch, plat.simulated) == ((10, 3), 100, "sm_103", True)
    assert plat.ue8m0_only_deepgemm and not plat.is_hopper
    assert "[simulated]" in plat.describe()
    explicit = platform_mod.detect("sm_90")  # an explicit arch (the --arch flag) beats the environment
    assert (explicit.arch, explicit.is_hopper) == ("sm_90", True)


def test_bad_arch_env_is_an_env_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv("BLOCKFP8_ARCH", "blackwell")
    with pytest.raises(EnvError, match="BLOCKFP8_ARCH: arch 'blackwell' is not valid"):
        platform_mod.detect()


def test_optional_libraries_are_probed_without_import(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "deep_gemm", None)  # hidden
    plat = platform_mod.detect("sm_90")
    assert plat.has("deep_gemm") is False and plat.has("no_such_library") is False
    assert set(platform_mod.OPTIONAL_LIBRARIES) <= set(plat.libraries)
    assert plat.as_dict()["family"] == 90


def test_cpu_platform_has_no_capability():
    plat = platform_mod.detect()
    if plat.device == "cuda":
        pytest.skip("needs a machine without a GPU")
    assert (plat.capability, plat.family, plat.arch, plat.simulated) == (None, None, None, False)
    assert plat.describe() == "CPU (no CUDA GPU)"


def test_source_commit_prefers_the_stamp_a_copied_tree_is_given(monkeypatch):
    from blockfp8 import platform as plat

    monkeypatch.setenv("BLOCKFP8_COMMIT", "abc1234")
    assert plat.source_commit() == "abc1234"
    assert plat.run_environment("cpu", commit=True)["commit"] == "abc1234"
    monkeypatch.delenv("BLOCKFP8_COMMIT")
    assert plat.source_commit() != "abc1234"
