"""Environment variables: parsing, 'explicitly set', and errors that list the valid values."""

from __future__ import annotations

import pytest

from blockfp8 import envs
from blockfp8.backends.base import BackendId
from blockfp8.envs import EnvError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in envs.ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def test_backend_ids_match_the_enum():
    assert envs.BACKEND_IDS == tuple(b.value for b in BackendId)


@pytest.mark.parametrize("name", ["BLOCKFP8_USE_DEEP_GEMM", "BLOCKFP8_MOE_USE_DEEP_GEMM"])
@pytest.mark.parametrize("raw,value,is_set", [(None, None, False), ("", None, False), ("0", False, True),
                                              ("1", True, True), (" 1 ", True, True)])
def test_tristate(name, raw, value, is_set, monkeypatch):
    if raw is not None:
        monkeypatch.setenv(name, raw)
    assert envs.get(name) is value and envs.is_set(name) is is_set


@pytest.mark.parametrize("name,raw,valid", [
    ("BLOCKFP8_USE_DEEP_GEMM", "true", "valid values: 0, 1"),
    ("BLOCKFP8_MOE_USE_DEEP_GEMM", "2", "valid values: 0, 1"),
    ("BLOCKFP8_GEMM_BACKEND", "cutlass", "valid values: auto, deepgemm, scaled_mm, cute, triton, reference"),
    ("BLOCKFP8_DISABLED_BACKENDS", "triton,auto", "a comma list of deepgemm, scaled_mm, cute, triton, reference"),
    ("BLOCKFP8_ARCH", "hopper", "examples of valid values: sm_89, sm_90"),
    ("BLOCKFP8_LOG_LEVEL", "loud", "valid values: DEBUG, INFO, WARNING, ERROR"),
])
def test_invalid_values_list_the_valid_ones(name, raw, valid, monkeypatch):
    monkeypatch.setenv(name, raw)
    with pytest.raises(EnvError, match=name) as info:
        envs.get(name)
    assert valid in str(info.value)
    with pytest.raises(EnvError):
        envs.validate_all()


def test_values_are_normalised(monkeypatch):
    monkeypatch.setenv("BLOCKFP8_GEMM_BACKEND", " Triton ")
    monkeypatch.setenv("BLOCKFP8_DISABLED_BACKENDS", "DeepGEMM, scaled_mm,,")
    monkeypatch.setenv("BLOCKFP8_LOG_LEVEL", "info")
    assert envs.get("BLOCKFP8_GEMM_BACKEND") == "triton"
    assert envs.get("BLOCKFP8_DISABLED_BACKENDS") == ("deepgemm", "scaled_mm")
    assert envs.get("BLOCKFP8_LOG_LEVEL") == "INFO"


def test_defaults_when_unset():
    assert envs.get("BLOCKFP8_GEMM_BACKEND") is None
    assert envs.get("BLOCKFP8_DISABLED_BACKENDS") == ()
    assert envs.get("BLOCKFP8_ARCH") is None
    assert envs.get("BLOCKFP8_LOG_LEVEL") == "WARNING"
    envs.validate_all()
