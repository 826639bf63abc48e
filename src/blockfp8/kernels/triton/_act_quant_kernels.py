"""Triton kernel of ``act_quant`` (imported lazily by it: importing blockfp8 never imports Triton), and the
arithmetic of 1 x G quantization as device functions.

See ``act_quant`` for what it computes and the scale layouts it writes.
"""

import triton
import triton.language as tl


@triton.jit
def group_scale(x, eps, fmax, UE8M0: tl.constexpr):
    """Per row of ``x [rows, G]`` (float32): ``max(amax, eps) / fmax`` correctly rounded, for UE8M0 the exponent
    ceil on the float32 bits (clamped to the finite E8M0 range); NaN when the group holds a NaN (``tl.max`` drops
    NaN on GPU, so it is tracked explicitly), a non-finite amax stays non-finite."""
    amax = tl.max(tl.abs(x), axis=1)
    has_nan = tl.sum((x != x).to(tl.int32), axis=1) > 0
    amax = tl.maximum(amax, eps)
    amax = tl.where(has_nan, float("nan"), amax)
    scale = tl.math.div_rn(amax, fmax)
    if UE8M0:
        bits = scale.to(tl.int32, bitcast=True)
        ex = (bits >> 23) & 0xFF
        e = ex + ((bits & 0x7FFFFF) != 0).to(tl.int32)
        e = tl.minimum(tl.maximum(e, 1), 254)
        scale = tl.where(ex == 0xFF, float("nan"), (e << 23).to(tl.float32, bitcast=True))
    return scale


@triton.jit
def group_quant(x, scale, fmax):
    """``clamp(x / scale, +-fmax)`` (the quotient correctly rounded) as float32, ready for one cast to E4M3.

    No division per element: one correctly rounded reciprocal per row, a product, and one Newton step on the
    exact remainder (Markstein: with r = RN(1/s) and q0 within an ulp of x/s, q0 + (x - q0 s) r rounded once is
    RN(x/s)). An exact q0 is kept as is (the sign of a zero); x / inf is x * 0 as in IEEE division; a NaN scale
    gives NaN. Against ``div_rn`` per element: 4-5 us less per layer at M=1 on an H200 (docs/kernels.md)."""
    r = tl.math.div_rn(tl.full(scale.shape, 1.0, tl.float32), scale)[:, None]
    q0 = x * r
    rem = tl.math.fma(-q0, scale[:, None], x)
    q = tl.where(rem == 0.0, q0, tl.math.fma(rem, r, q0))
    q = tl.where(scale[:, None] == float("inf"), x * 0.0, q)
    return tl.clamp(q, -fmax, fmax, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _quantize_act_kernel(
    x_ptr, q_ptr, s_ptr,
    M, K, K_OUT, M_ROWS, G,
    stride_xm, stride_qm, stride_sm, stride_sg,
    eps, fmax,
    UE8M0: tl.constexpr, PACKED: tl.constexpr,
    GROUP: tl.constexpr, GROUPS_PER_PROG: tl.constexpr, BLOCK_M: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_g = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, GROUP)
    row_in = rows < M  # real rows; rows in [M, M_ROWS) are padding: zeros
    row_out = rows < M_ROWS
    word = tl.zeros([BLOCK_M], dtype=tl.int32)
    for j in tl.static_range(GROUPS_PER_PROG):
        g = pid_g * GROUPS_PER_PROG + j
        k = g * GROUP + cols
        kmask = k < K
        x = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_xm + k[None, :],
                    mask=row_in[:, None] & kmask[None, :], other=0.0).to(tl.float32)  # columns past K: zeros
        scale = group_scale(x, eps, fmax, UE8M0)
        if PACKED:
            byte = (scale.to(tl.int32, bitcast=True) >> 23) & 0xFF  # the E8M0 exponent; NaN -> 0xFF
            byte = tl.where(g < G, byte, 0)
            word = word | (byte << (8 * j))
        q = group_quant(x, scale, fmax)
        q8 = q.to(q_ptr.dtype.element_ty)  # cvt.rn.satfinite: one rounding, checked bitwise on GPU
        tl.store(q_ptr + rows[:, None].to(tl.int64) * stride_qm + k[None, :], q8,
                 mask=row_out[:, None] & (k < K_OUT)[None, :])
        if not PACKED:
            tl.store(s_ptr + rows.to(tl.int64) * stride_sm + g * stride_sg, scale, mask=row_out)
    if PACKED:
        tl.store(s_ptr + rows.to(tl.int64) * stride_sm + pid_g * stride_sg, word, mask=row_out)
