"""The one table of numerical tolerances. Tests and GPU checks read from here; no magic numbers elsewhere."""

from __future__ import annotations

import torch

# Quantizers (reference vs kernels): bit-exact.
QUANT_BITWISE = 0

# Kernel GEMM vs a float32 matmul of the *dequantized* operands: atol = 2**-7 * max|ref| for bf16 output
# (one bf16 rounding of the largest output plus accumulation-order noise).
# fp16 / fp32 output: not the output rounding but the kernel's accumulator bounds the error. Hopper's FP8 MMA
# (wgmma) accumulates each 128-K block in reduced precision (DeepSeek-V3 measures ~14 effective bits, hence its
# promotion to float32 every 128 K, which our kernels do too); the per-block partial sums, which can exceed the
# final output, carry relative errors near 2**-14. Measured on an H100 (Triton, fp32 out, M,N,K = 67,192,576 and
# 199,256,1536): ~3e-4 * max|ref|, i.e. 2**-11.7. 2**-10 is that with ~3x headroom; a wrong scale, block or
# masked tile is off by far more (order max|ref|).
GEMM_ATOL_FRACTION = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10, torch.float32: 2.0**-10}

# End to end (layer with on-the-fly quantization vs the unquantized float op): DeepGEMM's calc_diff bound.
E2E_CALC_DIFF = 1e-3

# Reference GEMM vs float64 matmul of the same dequantized operands (float32 accumulate).
REFERENCE_GEMM_RTOL = 1e-5


def gemm_atol(ref: torch.Tensor, out_dtype: torch.dtype) -> float:
    return GEMM_ATOL_FRACTION[out_dtype] * float(ref.abs().max()) if ref.numel() else 0.0


def fp8_roundtrip_rel_bound(fp8_dtype: torch.dtype = torch.float8_e4m3fn) -> float:
    """Max relative error of one FP8 rounding for a normal value: half an ulp = 2**-(mantissa bits + 1)."""
    return 2.0**-4  # E4M3 (both fn and fnuz) have 3 mantissa bits


def fp8_subnormal_step(fp8_dtype: torch.dtype = torch.float8_e4m3fn) -> float:
    """Spacing of FP8 subnormals (absolute error bound, in units of the scale, for tiny values)."""
    return 2.0**-9 if fp8_dtype == torch.float8_e4m3fn else 2.0**-10

# Layers and models.
# A gated MLP or MoE block (two chained block-FP8 GEMMs, both operands of each quantized) vs the same block in
# float: each GEMM contributes about the single-GEMM E2E_CALC_DIFF scale (measured 2.0e-3 to 2.2e-3 for the pair
# over 24 random Qwen3-MoE / Mixtral blocks), so twice the single-GEMM bound, with 2x headroom. A routing,
# weighting or gate/up-order mistake gives calc_diff of order 0.1 to 1.
FP8_MLP_CALC_DIFF = 2 * 2 * E2E_CALC_DIFF

# Tensor parallel vs unsharded in float32: the same quantized operands (shard boundaries on block boundaries),
# only the order of the final float32 sum (the all-reduce) differs.
# (Both sides are float32 CPU math on the same operands, so this stays far tighter than a kernel's bound.)
TP_ATOL_FRACTION = 2.0**-16
