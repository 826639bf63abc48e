"""DeepGEMM grouped MoE, proven on CPU: the device-side routing layouts both kernels take, a MoE layer resolved to
the deepgemm backend (Hopper and Blackwell plans) running the masked kernel for decode and the contiguous one for
prefill against ``quant.reference.moe_reference`` (through a stand-in that computes from the scales as the library
reads them), the policy's fallbacks, and the smoke check that keeps a crashing build out. The real library runs in
``test_deepgemm_gpu.py``."""

import dataclasses
import os
import textwrap

import pytest
import torch

from blockfp8.backends import select
from blockfp8.backends.base import GemmProblem
from blockfp8.config import BlockFP8Config
from blockfp8.kernels import deepgemm as dg
from blockfp8.kernels import deepgemm_moe as M
from blockfp8.nn import BlockFP8Experts
from blockfp8.platform import detect
from blockfp8.quant import layouts as L
from blockfp8.quant import reference as R
from blockfp8.quant.metrics import calc_diff
from blockfp8.testing.tolerances import E2E_CALC_DIFF
from tests.fake_deep_gemm.computing import ComputingDeepGemm


def _platform(arch, **changes):
    plat = detect(arch)
    return dataclasses.replace(plat, libraries={**plat.libraries, "deep_gemm": True}, **changes)


def _routing(t, e, k, seed):
    g = torch.Generator().manual_seed(seed)
    w, ids = torch.topk(torch.softmax(torch.randn(t, e, generator=g), -1), k, dim=-1)
    return w / w.sum(-1, keepdim=True), ids


@pytest.fixture
def stand_in(monkeypatch):
    made = {}

    def load():
        return made["module"], ""

    monkeypatch.setattr(dg, "load", load)
    monkeypatch.setattr(dg, "load_cached", load)
    return made


@pytest.mark.parametrize("t,e,k,align", [(1, 8, 2, 16), (7, 4, 2, 16), (33, 16, 4, 16), (5, 128, 8, 128)])
def test_contiguous_rows_are_tiles_of_one_expert(t, e, k, align):
    _, ids = _routing(t, e, k, seed=t)
    token, m_indices, pair_row = M.contiguous_rows(ids, e, align)
    cap, n = token.numel(), t * k
    assert cap % align == 0 and cap <= n + min(e, n) * (align - 1) + align
    assert sorted(pair_row.tolist()) == sorted(set(pair_row.tolist())), "one row per routed pair"
    assert torch.equal(m_indices[pair_row].long(), ids.reshape(-1)), "each pair's row names its expert"
    assert torch.equal(token[pair_row], torch.arange(n) // k), "each pair's row reads its token"
    unused = torch.ones(cap, dtype=torch.bool)
    unused[pair_row] = False
    assert bool((m_indices[unused] == -1).all()), "rows no pair uses are padding"
    for start in range(0, cap, align):
        tile = m_indices[start:start + align]
        real = tile[tile >= 0]
        assert real.numel() == 0 or (bool((real == tile[0]).all()) and int(tile[0]) >= 0), f"tile {start}"


@pytest.mark.parametrize("t,e,k", [(1, 8, 2), (13, 4, 2), (9, 128, 8)])
def test_masked_rows_fill_each_experts_slab_from_the_top(t, e, k):
    _, ids = _routing(t, e, k, seed=t)
    rows, token, pair_row, masked_m = M.masked_rows(ids, e, t)  # slabs of exactly T rows
    flat = ids.reshape(-1)
    assert torch.equal(masked_m.long(), torch.bincount(flat, minlength=e))
    assert torch.equal(pair_row // t, flat), "each pair sits in its expert's slab"
    assert bool((pair_row % t < masked_m.long()[flat]).all()), "within the expert's counted rows"
    assert len(set(pair_row.tolist())) == t * k
    assert torch.equal(rows.sort().values, pair_row.sort().values)
    assert torch.equal(token, torch.argsort(flat, stable=True) // k)


@pytest.mark.parametrize("arch,fmt", [("sm_90", "float32"), ("sm_90", "ue8m0"), ("sm_100", "float32")])
@pytest.mark.parametrize("t", [1, 13, 67])
def test_moe_layer_on_deepgemm_grouped_kernels_computes_the_reference(stand_in, arch, fmt, t):
    e, k, h, i = 6, 2, 256, 128
    stand_in["module"] = ComputingDeepGemm(100 if arch == "sm_100" else 90)
    g = torch.Generator().manual_seed(t)
    gate_up = (torch.randn(e, 2 * i, h, generator=g) * 0.05).to(torch.bfloat16)  # DeepGEMM writes bf16
    down = (torch.randn(e, h, i, generator=g) * 0.05).to(torch.bfloat16)
    ex = BlockFP8Experts.from_fused(gate_up, down, act_fn=torch.nn.SiLU(), scale_fmt=fmt,
                                    config=BlockFP8Config(moe_backend="deepgemm"), platform=_platform(arch))
    d = ex.decisions["w13"]
    assert d.backend == "deepgemm" and d.grouped_moe and ex.prepared_moe is not None and ex.prepared == []
    assert M.MASKED_KERNEL in d.moe_kernel and M.CONTIGUOUS_KERNEL in d.moe_kernel
    tw, ids = _routing(t, e, k, seed=t + 1)
    x = (torch.randn(t, h, generator=g) * 2).to(torch.bfloat16)
    out = ex(x, ids, tw)
    kernel = M.kernel_for(t)
    assert [c[0] for c in stand_in["module"].calls] == [kernel, kernel], "two grouped launches, no expert loop"
    p = ex.prepared_moe
    s13, s2 = p.w13_scale, p.w2_scale
    if arch == "sm_100":  # packed per weight row at load: the reference reads the block scales back
        s13, s2 = L.unpack_ue8m0_per_row(s13, R.cdiv(h, 128)), L.unpack_ue8m0_per_row(s2, R.cdiv(i, 128))
    ref = R.moe_reference(x, p.w13, s13, p.w2, s2, tw, ids, p.block_size, str(d.act_scale_fmt))
    diff = calc_diff(out.double(), ref.double())
    assert diff < E2E_CALC_DIFF, f"deepgemm moe arch={arch} fmt={fmt} T={t} kernel={kernel} calc_diff={diff}"


def test_a_deep_gemm_without_grouped_kernels_falls_to_the_next_grouped_backend(stand_in):
    class DenseOnly:
        fp8_gemm_nt = ComputingDeepGemm(90).fp8_gemm_nt

    stand_in["module"] = DenseOnly()
    problem = GemmProblem(n=512, k=256, grouped=True, num_experts=8)
    d = select.resolve(problem, BlockFP8Config(), _platform("sm_90"), kind="moe")
    assert d.backend == "triton" and d.grouped_moe and "Triton" in d.moe_kernel
    assert any(r.startswith("deepgemm: skipped: grouped (MoE) GEMMs need deep_gemm.m_grouped_fp8_gemm_nt_contiguous")
               for r in d.reasons), d.reasons
    dense = select.resolve(GemmProblem(n=512, k=256), BlockFP8Config(), _platform("sm_90"))
    assert dense.backend == "deepgemm", "the dense GEMM is still there"


def test_a_crashing_build_is_skipped_with_the_signal(stand_in, monkeypatch):
    stand_in["module"] = ComputingDeepGemm(90)
    why = "deep_gemm is installed but crashes (signal SIGSEGV) in a smoke GEMM"
    monkeypatch.setattr(dg, "smoke_cached", lambda device="cuda": (False, why))
    real_gpu = _platform("sm_90", device="cuda", simulated=False, gpu_name="NVIDIA H200")
    for kind, problem in (("linear", GemmProblem(n=512, k=256)),
                          ("moe", GemmProblem(n=512, k=256, grouped=True, num_experts=8))):
        d = select.resolve(problem, BlockFP8Config(), real_gpu, kind=kind)
        assert d.backend != "deepgemm" and f"deepgemm: skipped: {why}" in d.reasons
    planned = select.resolve(GemmProblem(n=512, k=256), BlockFP8Config(), _platform("sm_90"))
    assert planned.backend == "deepgemm", "a plan for another machine runs no smoke GEMM"


_FAKES = {
    "crashes": "__import__('os').kill(__import__('os').getpid(), 11)",
    "wrong": "d.zero_()",
    "right": "d.fill_(128)",
}


@pytest.mark.parametrize("behaviour", sorted(_FAKES))
def test_smoke_gemm_runs_in_a_child_process(tmp_path, monkeypatch, behaviour):
    pkg = tmp_path / "deep_gemm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(f"""
        def fp8_gemm_nt(a, b, d):
            {_FAKES[behaviour]}
    """))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, (str(tmp_path), os.environ.get("PYTHONPATH")))))
    ok, why = dg.smoke("cpu")
    if behaviour == "right":
        assert ok and why == ""
    elif behaviour == "crashes":
        assert not ok and "crashes (signal SIGSEGV)" in why, why
    else:
        assert not ok and "smoke GEMM fails (exit 1): wrong result: 16384 of 16384" in why, why


def test_moe_dispatch_runs_the_measured_fastest_grouped_backend_per_token_count(stand_in, monkeypatch):
    """Automatic choice keeps the policy's MoE decision (DeepGEMM) and, as dense layers do per M, runs the grouped
    backend the shipped MoE table measured fastest for the call's token count."""
    from blockfp8.backends import tuned

    e, k, h, i = 6, 2, 256, 128
    stand_in["module"] = ComputingDeepGemm(90)
    table = {"NVIDIA_H200": {tuned.moe_shape_key(e, 2 * i, h): {
        "1": {"backend": "triton", "us": {"triton": 10.0, "deepgemm": 20.0}},
        "64": {"backend": "deepgemm", "us": {"triton": 30.0, "deepgemm": 20.0}}}}}
    real = tuned.load
    monkeypatch.setattr(tuned, "load", lambda file, path=None: table if file == tuned.MOE_DISPATCH_FILE
                        else real(file, path))
    g = torch.Generator().manual_seed(0)
    ex = BlockFP8Experts.from_fused((torch.randn(e, 2 * i, h, generator=g) * 0.05).to(torch.bfloat16),
                                    (torch.randn(e, h, i, generator=g) * 0.05).to(torch.bfloat16),
                                    act_fn=torch.nn.SiLU(), platform=_platform("sm_90", simulated=False,
                                                                                gpu_name="NVIDIA H200"))
    d = ex.decisions["w13"]
    assert d.backend == "deepgemm" and d.dispatch == ((32, "triton"), (8192, "deepgemm")), d.dispatch
    assert any("per tokens from the MoE table for NVIDIA_H200" in r for r in d.reasons)
    for t, ran in ((13, "triton"), (67, "deepgemm")):
        stand_in["module"].calls.clear()
        tw, ids = _routing(t, e, k, seed=t)
        x = torch.randn(t, h, generator=g).to(torch.bfloat16)
        out = ex(x, ids, tw)
        p = ex.prepared_moe
        ref = R.moe_reference(x, p.w13, p.w13_scale, p.w2, p.w2_scale, tw, ids, p.block_size)
        assert calc_diff(out.double(), ref.double()) < E2E_CALC_DIFF
        assert bool(stand_in["module"].calls) == (ran == "deepgemm"), (t, stand_in["module"].calls)
