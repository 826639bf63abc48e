"""Fused block-FP8 MoE (Triton) vs the per-expert reference loop; routing alignment invariants."""

import os

import pytest
import torch

if not torch.cuda.is_available():  # the interpreter is chosen process-wide, before Triton builds anything
    os.environ.setdefault("TRITON_INTERPRET", "1")

from blockfp8.quant import reference as R  # noqa: E402
from blockfp8.quant.metrics import calc_diff  # noqa: E402
from blockfp8.testing.tolerances import E2E_CALC_DIFF  # noqa: E402

pytest.importorskip("triton")

from blockfp8.kernels.triton import moe as triton_moe  # noqa: E402

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _skip_cpu_on_gpu_box(device):
    if device == "cpu" and torch.cuda.is_available():
        pytest.skip("interpreter tests run on CPU-only machines")


def _routing(t, e, k, seed, device):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(t, e, generator=g)
    w, ids = torch.topk(torch.softmax(logits, -1), k, dim=-1)
    return (w / w.sum(-1, keepdim=True)).to(device), ids.to(device)


def _experts(e, h, i, fmt, seed, device):
    g = torch.Generator().manual_seed(seed)
    w13 = torch.randn(e, 2 * i, h, generator=g) * 0.05
    w2 = torch.randn(e, h, i, generator=g) * 0.05
    q13, s13 = zip(*(R.quantize_weight(w13[x], (128, 128), fmt) for x in range(e)), strict=True)
    q2, s2 = zip(*(R.quantize_weight(w2[x], (128, 128), fmt) for x in range(e)), strict=True)
    return [torch.stack(v).to(device) for v in (q13, s13, q2, s2)]


@pytest.mark.parametrize("t,e,k,bm", [(7, 4, 2, 16), (33, 8, 3, 16), (5, 16, 4, 32), (1, 128, 8, 16), (2, 64, 8, 64)])
def test_align_by_expert_invariants(t, e, k, bm):
    _, ids = _routing(t, e, k, seed=t, device="cpu")
    sorted_ids, expert_ids = triton_moe.align_by_expert(ids, e, bm)
    n_pairs = t * k
    # decode: the buffers hold the blocks that can carry work, not one block per expert
    assert sorted_ids.numel() == -(-(n_pairs + min(e, n_pairs) * (bm - 1)) // bm) * bm
    real = sorted_ids[sorted_ids < n_pairs]
    assert sorted(real.tolist()) == list(range(n_pairs)), "every routed pair exactly once"
    flat = ids.reshape(-1)
    for b, ex in enumerate(expert_ids.tolist()):
        block = sorted_ids[b * bm:(b + 1) * bm]
        pairs = block[block < n_pairs]
        if ex < 0:
            assert pairs.numel() == 0
        else:
            assert bool((flat[pairs.long()] == ex).all()), f"block {b} mixes experts"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", ["float32", "ue8m0"])
@pytest.mark.parametrize("t", [1, 13, 67])
def test_fused_moe_matches_per_expert_reference(device, fmt, t):
    _skip_cpu_on_gpu_box(device)
    e, k, h, i = 4, 2, 256, 192  # I = 192: the second GEMM's K is not a multiple of 128
    if device == "cuda":
        e, k, h, i = 16, 4, 1024, 320
    w13, s13, w2, s2 = _experts(e, h, i, fmt, seed=t, device=device)
    tw, ids = _routing(t, e, k, seed=t + 1, device=device)
    g = torch.Generator().manual_seed(t + 2)
    x = torch.randn(t, h, generator=g).to(device=device, dtype=torch.bfloat16)
    out = triton_moe.fused_moe(x, w13, s13, w2, s2, tw, ids, scale_fmt=fmt, out_dtype=torch.float32)
    ref = R.moe_reference(x, w13, s13, w2, s2, tw, ids, scale_fmt=fmt)
    assert torch.isfinite(out).all()
    diff = calc_diff(out.cpu().double(), ref.cpu().double())
    assert diff < E2E_CALC_DIFF, f"backend=triton moe fmt={fmt} T={t} E={e} k={k} H={h} I={i} calc_diff={diff}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("inter,fmt", [(160, "float32"), (160, "ue8m0"), (256, "float32")])
@torch.no_grad()
def test_moe_layer_runs_the_fused_kernel(device, inter, fmt):
    """BlockFP8Experts through its triton MoE decision: one grouped launch (fused_moe), scales prepared once
    (I % 128 != 0: halves padded to whole blocks), vs the same layer on the reference backend."""
    from blockfp8.config import BlockFP8Config
    from blockfp8.nn import BlockFP8Experts
    from blockfp8.platform import detect

    _skip_cpu_on_gpu_box(device)
    e, h, k, t = 4, 256, 2, 13
    if device == "cuda":
        e, h, k, t = 16, 1024, 4, 67
    g = torch.Generator().manual_seed(inter)
    gate_up = (torch.randn(e, 2 * inter, h, generator=g) * 0.05).to(device)
    down = (torch.randn(e, h, inter, generator=g) * 0.05).to(device)
    plat = detect("sm_90") if device == "cpu" else None

    def layer(backend):
        cfg = BlockFP8Config(moe_backend=backend, scale_fmt=None if fmt == "float32" else fmt)
        return BlockFP8Experts.from_fused(gate_up.bfloat16(), down.bfloat16(), config=cfg, platform=plat)

    fused, ref_layer = layer("triton"), layer("reference")
    p = fused.prepared_moe
    assert p is not None and fused.prepared == [] and p.backend == "triton"
    assert ref_layer.prepared_moe.backend == "reference", "the reference MoE: expert by expert, in one operator"
    i_pad = -(-inter // 128) * 128
    assert p.intermediate == i_pad and tuple(p.w13.shape) == (e, 2 * i_pad, h) and tuple(p.w2.shape) == (e, h, i_pad)
    assert tuple(p.w13_scale.shape) == (e, 2 * i_pad // 128, h // 128)
    if inter == i_pad and fmt == "float32":  # nothing to convert: the layer's tensors are shared
        assert p.w13.data_ptr() == fused.w13_weight.data_ptr() and p.w2.data_ptr() == fused.w2_weight.data_ptr()
    else:
        assert not bool(p.w13[:, inter:i_pad].float().any()) and not bool(p.w2[:, :, inter:].float().any())
    if fmt == "ue8m0":
        assert fused.decisions["w13"].requant_weight_ue8m0 and bool(R.is_power_of_two(p.w13_scale).all())
    tw, ids = _routing(t, e, k, seed=inter, device=device)
    x = torch.randn(t, h, generator=g).to(device=device, dtype=torch.bfloat16)
    got, want = fused(x, ids, tw), ref_layer(x, ids, tw)
    assert got.dtype == x.dtype and torch.isfinite(got.float()).all()
    diff = calc_diff(got.double().cpu(), want.double().cpu())
    assert diff < E2E_CALC_DIFF, f"backend=triton moe layer fmt={fmt} T={t} E={e} k={k} H={h} I={inter}: {diff}"
