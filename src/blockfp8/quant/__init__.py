"""Block-FP8 numerics: the reference implementation and error metrics."""

from blockfp8.quant.layouts import ScaleFmt, ScaleLayout, pack_ue8m0, unpack_ue8m0
from blockfp8.quant.metrics import calc_diff, max_abs_error, rel_fro_error, snr_bits, sqnr_db
from blockfp8.quant.reference import (
    FP8_DTYPES,
    SCALE_FMTS,
    QuantError,
    ceil_to_ue8m0,
    dequantize_act,
    dequantize_weight,
    e8m0_to_float32,
    fp8_max,
    gemm_reference,
    is_power_of_two,
    quantize_act,
    quantize_weight,
    requant_to_ue8m0,
    scales_to_float32,
    weight_scale_shape,
)

__all__ = [
    "FP8_DTYPES", "SCALE_FMTS", "QuantError", "ScaleFmt", "ScaleLayout", "calc_diff", "ceil_to_ue8m0",
    "dequantize_act", "dequantize_weight", "e8m0_to_float32", "fp8_max", "gemm_reference", "is_power_of_two",
    "max_abs_error", "pack_ue8m0", "quantize_act", "quantize_weight", "rel_fro_error", "requant_to_ue8m0",
    "scales_to_float32", "snr_bits", "sqnr_db", "unpack_ue8m0", "weight_scale_shape",
]
