"""The DeepGEMM path that ships, proven on CPU: a layer resolved to the deepgemm backend (Hopper and Blackwell
plans) prepares its weight and quantizes its activations into the family's scale layout, and the dense call reaches
a stand-in ``deep_gemm`` module that computes with those scales exactly as the kernel reads them (so a wrong layout
gives a wrong product). The real library is exercised by the GPU tests where it is installed."""

import dataclasses

import pytest
import torch

from blockfp8.backends.base import ScaleLayout
from blockfp8.config import BlockFP8Config
from blockfp8.kernels import deepgemm as dg
from blockfp8.nn import BlockFP8Linear
from blockfp8.platform import detect
from blockfp8.quant import reference as R
from blockfp8.testing.tolerances import gemm_atol
from tests.fake_deep_gemm.computing import ComputingDeepGemm


def _platform(arch):
    plat = detect(arch)
    return dataclasses.replace(plat, libraries={**plat.libraries, "deep_gemm": True})


@pytest.fixture
def computing_deep_gemm(monkeypatch):
    made = {}

    def load():
        return made.setdefault("module", ComputingDeepGemm(made["family"])), ""

    monkeypatch.setattr(dg, "load", load)
    monkeypatch.setattr(dg, "load_cached", load)  # what the gemm_deepgemm operator calls
    return made


@pytest.mark.parametrize("arch,fmt", [("sm_90", "float32"), ("sm_90", "ue8m0"), ("sm_100", "ue8m0"),
                                      ("sm_100", "float32")])
@pytest.mark.parametrize("m", [1, 13, 67])
def test_layer_on_deepgemm_computes_the_reference(computing_deep_gemm, arch, fmt, m):
    n, k = 192, 640
    computing_deep_gemm["family"] = 100 if arch == "sm_100" else 90
    g = torch.Generator().manual_seed(m)
    w_q, w_s = R.quantize_weight(torch.randn(n, k, generator=g), (128, 128), fmt)
    x = torch.randn(m, k, generator=g).to(torch.bfloat16) * 3
    layer = BlockFP8Linear.from_fp8(w_q, w_s, config=BlockFP8Config(linear_backend="deepgemm"),
                                    platform=_platform(arch))
    d = layer.decision
    assert d.backend == "deepgemm" and not d.fused_act_quant, "a CPU plan quantizes with the reference"
    if arch == "sm_100":  # UE8M0 only, packed: a float32 checkpoint is requantized once, at load
        assert d.act_scale_layout is ScaleLayout.PACKED_UE8M0 and d.requant_weight_ue8m0 == (fmt == "float32")
    else:
        assert d.act_scale_layout is ScaleLayout.MN_MAJOR and not d.requant_weight_ue8m0
    out = layer(x)
    module = computing_deep_gemm["module"]
    assert module.calls == [("fp8_gemm_nt", (m, k), (n, k))]
    w_q2, w_s2 = layer.prepared.weight, layer.prepared.checkpoint_scale
    if d.requant_weight_ue8m0:
        w_q2, w_s2 = R.requant_to_ue8m0(w_q, w_s.float(), (128, 128))
    x_q, x_s = R.quantize_act(x, 128, str(d.act_scale_fmt))
    ref = R.gemm_reference(x_q, x_s, w_q2, w_s2, (128, 128), torch.float32)
    assert out.dtype == torch.bfloat16
    diff = (out.float() - ref).abs().max()
    assert diff <= gemm_atol(ref, torch.bfloat16), f"arch={arch} fmt={fmt} M={m} diff={diff}"


def test_unaligned_shape_is_refused_with_the_reason(computing_deep_gemm):
    computing_deep_gemm["family"] = 90
    w_q, w_s = R.quantize_weight(torch.randn(200, 256), (128, 128))
    with pytest.raises(ValueError, match="N % 64 == 0"):
        BlockFP8Linear.from_fp8(w_q, w_s, config=BlockFP8Config(linear_backend="deepgemm"),
                                platform=_platform("sm_90"))


def test_load_reports_a_missing_library(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "deep_gemm", None)
    module, why = dg.load()
    assert module is None and "deep_gemm" in why


@pytest.mark.parametrize("arch", ["sm_90", "sm_100"])
def test_ragged_k_runs_on_a_weight_padded_once(computing_deep_gemm, arch):
    """K=600 is not a whole number of 128-wide blocks: the weight gets zero columns once at load and the
    activation per call, and the product is the unpadded one."""
    n, k, m = 192, 600, 7
    computing_deep_gemm["family"] = 100 if arch == "sm_100" else 90
    g = torch.Generator().manual_seed(5)
    w_q, w_s = R.quantize_weight(torch.randn(n, k, generator=g), (128, 128), "ue8m0")
    layer = BlockFP8Linear.from_fp8(w_q, w_s, config=BlockFP8Config(linear_backend="deepgemm"),
                                    platform=_platform(arch))
    assert tuple(layer.prepared.weight.shape) == (n, 640)
    x = torch.randn(m, k, generator=g).to(torch.bfloat16)
    out = layer(x)
    assert computing_deep_gemm["module"].calls == [("fp8_gemm_nt", (m, 640), (n, 640))]
    x_q, x_s = R.quantize_act(x, 128, str(layer.decision.act_scale_fmt))
    ref = R.gemm_reference(x_q, x_s, w_q, w_s, (128, 128), torch.float32)
    assert (out.float() - ref).abs().max() <= gemm_atol(ref, torch.bfloat16)
