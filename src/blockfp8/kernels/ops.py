"""Every kernel entry point as a torch operator in the ``blockfp8`` namespace (``torch.ops.blockfp8.*``).

As operators, ``torch.compile`` (``fullgraph=True``) and ``torch.export`` take a layer whole: Dynamo does not trace
into a launcher (its environment reads, lazy kernel builds, host-side checks), it records one call, and the fake
implementation registered here gives the output's shape, dtype and strides without running anything. The CPU
reference path is an operator too, so CPU tests run the same graph as a GPU.

Registered with ``torch.library.Library`` (``define`` + ``impl``) rather than ``torch.library.custom_op``: the
eager call then costs one dispatcher hop (about 7 us on a 2-core CPU box against 18 us through ``custom_op``),
which matters for decode. Implementations import their launcher on first call: importing this module imports
neither Triton nor DeepGEMM.

Operators (all functional: new outputs, inputs untouched):

* ``quantize_act(x, group_size, scale_fmt, layout, pad_m, pad_k, fp8_dtype, fused) -> (q, scale)``: 1 x G
  activation quantization of a 2-D ``x [M, K]`` into ``scale_fmt`` scales laid out as ``layout``
  (``quant.layouts``), rows padded to ``pad_m``, zero columns to ``pad_k`` (within the last group); ``fused``
  picks the Triton kernel over the reference (same bits).
* ``gemm_reference`` / ``gemm_triton`` / ``gemm_scaled_mm`` / ``gemm_cute`` / ``gemm_deepgemm``:
  ``out[M, N] = x @ w.T`` with per-128-K promotion, from quantized operands in the layouts each kernel takes.
* ``moe_reference`` / ``moe_triton`` / ``moe_deepgemm``: a whole block-FP8 MoE (``quant.reference.moe_reference``
  semantics); the Triton and DeepGEMM ones route on the device with no host sync, so they can be captured in a CUDA
  graph.
"""

from __future__ import annotations

import torch

from blockfp8.kernels.act_quant import padded_width
from blockfp8.quant import reference as ref
from blockfp8.quant.layouts import ScaleLayout, empty_scales

NAMESPACE = "blockfp8"
_LIB = torch.library.Library(NAMESPACE, "FRAGMENT")
_ANY_DEVICE = "CompositeExplicitAutograd"  # one implementation for every device (inference only: no autograd)

_SCHEMAS = {
    "quantize_act": "(Tensor x, int group_size, str scale_fmt, str layout, int pad_m, int pad_k, "
                    "ScalarType fp8_dtype, bool fused) -> (Tensor, Tensor)",
    "gemm_reference": "(Tensor x_q, Tensor x_scale, Tensor w_q, Tensor w_scale, int block_n, int block_k, "
                      "ScalarType out_dtype, Tensor? bias) -> Tensor",
    "gemm_triton": "(Tensor x_q, Tensor x_scale, Tensor w_q, Tensor w_scale, int block_n, int block_k, "
                   "ScalarType out_dtype, Tensor? bias, int[] config) -> Tensor",
    "gemm_scaled_mm": "(Tensor x_q, Tensor x_scale, Tensor w_q, Tensor w_scale, ScalarType out_dtype, "
                      "Tensor? bias) -> Tensor",
    "gemm_cute": "(Tensor x_q, Tensor x_scale, Tensor w_q, Tensor w_scale, ScalarType out_dtype, Tensor? bias, "
                 "int[] config) -> Tensor",
    "gemm_deepgemm": "(Tensor x_q, Tensor x_scale, Tensor w_q, Tensor w_scale) -> Tensor",
    "moe_reference": "(Tensor x, Tensor w13, Tensor w13_scale, Tensor w2, Tensor w2_scale, Tensor topk_weights, "
                     "Tensor topk_ids, int block_n, int block_k, str scale_fmt, ScalarType act_dtype) -> Tensor",
    "moe_triton": "(Tensor x, Tensor w13, Tensor w13_scale, Tensor w2, Tensor w2_scale, Tensor topk_weights, "
                  "Tensor topk_ids, int block_n, int block_k, str scale_fmt) -> Tensor",
    "moe_deepgemm": "(Tensor x, Tensor w13, Tensor w13_scale, Tensor w2, Tensor w2_scale, Tensor topk_weights, "
                    "Tensor topk_ids, str scale_fmt, int align_m, int masked_max_tokens, bool fused_quant) -> Tensor",
}


def _register(name: str, impl, fake) -> None:
    if not hasattr(torch.ops.blockfp8, name):  # a module reload must not define an operator twice
        _LIB.define(name + _SCHEMAS[name])
        _LIB.impl(name, impl, _ANY_DEVICE)
        torch.library.register_fake(f"{NAMESPACE}::{name}", fake, lib=_LIB)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ref.QuantError(message)


# ------------------------------------------------------------------------------------------------ quantize_act


def _quantize_act(x, group_size, scale_fmt, layout, pad_m, pad_k, fp8_dtype, fused):
    from blockfp8.kernels import act_quant

    return act_quant.quantize_act(x, group_size, scale_fmt, layout, pad_m=pad_m, pad_k=pad_k, fp8_dtype=fp8_dtype,
                                  fused=fused)


def _quantize_act_fake(x, group_size, scale_fmt, layout, pad_m, pad_k, fp8_dtype, fused):
    _check(x.dim() == 2, f"quantize_act: expected a 2-D [M, K] activation, got shape {tuple(x.shape)}")
    _check(x.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64),
           f"quantize_act: activation dtype {x.dtype} is not a float dtype")
    _check(scale_fmt in ref.SCALE_FMTS, f"quantize_act: scale_fmt={scale_fmt!r}; valid: {', '.join(ref.SCALE_FMTS)}")
    layout = ScaleLayout.parse(layout)
    m, k = x.shape
    m_pad = ref.cdiv(m, pad_m) * pad_m
    groups = ref.cdiv(k, group_size)
    q = x.new_empty((m_pad, padded_width(k, group_size, pad_k)), dtype=fp8_dtype)
    return q, empty_scales(m_pad, groups, layout, x.device)


# ------------------------------------------------------------------------------------------------ dense GEMMs


def _gemm_out(x_q, w_q, out_dtype):
    _check(x_q.dim() == 2 and w_q.dim() == 2, f"gemm: expected 2-D x [M, K] and w [N, K], got "
                                              f"{tuple(x_q.shape)} and {tuple(w_q.shape)}")
    _check(x_q.shape[1] == w_q.shape[1], f"gemm: x has K={x_q.shape[1]}, the weight K={w_q.shape[1]}")
    return x_q.new_empty((x_q.shape[0], w_q.shape[0]), dtype=out_dtype)


def _gemm_reference(x_q, x_scale, w_q, w_scale, block_n, block_k, out_dtype, bias):
    return ref.gemm_reference(x_q, x_scale, w_q, w_scale, (block_n, block_k), out_dtype, bias)


def _gemm_reference_fake(x_q, x_scale, w_q, w_scale, block_n, block_k, out_dtype, bias):
    return _gemm_out(x_q, w_q, out_dtype)


def _gemm_triton(x_q, x_scale, w_q, w_scale, block_n, block_k, out_dtype, bias, config):
    from blockfp8.kernels.triton import gemm

    return gemm.fp8_block_gemm(x_q, x_scale, w_q, w_scale, (block_n, block_k), out_dtype, bias,
                               config=gemm.decode_config(config))


def _gemm_triton_fake(x_q, x_scale, w_q, w_scale, block_n, block_k, out_dtype, bias, config):
    return _gemm_out(x_q, w_q, out_dtype)


def _gemm_scaled_mm(x_q, x_scale, w_q, w_scale, out_dtype, bias):
    from blockfp8.kernels.scaled_mm import blockwise_gemm

    return blockwise_gemm(x_q, x_scale, w_q, w_scale, out_dtype, bias)


def _gemm_scaled_mm_fake(x_q, x_scale, w_q, w_scale, out_dtype, bias):
    return _gemm_out(x_q, w_q, out_dtype)


def _gemm_cute(x_q, x_scale, w_q, w_scale, out_dtype, bias, config):
    from blockfp8.kernels.cutedsl import gemm

    return gemm.fp8_block_gemm(x_q, x_scale, w_q, w_scale, out_dtype, bias,
                               config=tuple(config) if config else gemm.default_config(x_q.shape[0], w_q.shape[0],
                                                                                       gemm.num_sms(x_q.device)))


def _gemm_cute_fake(x_q, x_scale, w_q, w_scale, out_dtype, bias, config):
    return _gemm_out(x_q, w_q, out_dtype)


def _gemm_deepgemm(x_q, x_scale, w_q, w_scale):
    from blockfp8.kernels import deepgemm

    module, why = deepgemm.load_cached()
    if module is None:
        raise RuntimeError(f"deepgemm: {why}")
    return deepgemm.gemm(module, x_q, x_scale, w_q, w_scale)


def _gemm_deepgemm_fake(x_q, x_scale, w_q, w_scale):
    return _gemm_out(x_q, w_q, torch.bfloat16)


# ------------------------------------------------------------------------------------------------ MoE


def _moe_reference(x, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids, block_n, block_k, scale_fmt, act_dtype):
    return ref.moe_reference(x, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids, (block_n, block_k), scale_fmt,
                             act_dtype)


def _moe_reference_fake(x, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids, block_n, block_k, scale_fmt,
                        act_dtype):
    return _moe_fake(x, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids, block_n, block_k, scale_fmt)


def _moe_triton(x, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids, block_n, block_k, scale_fmt):
    from blockfp8.kernels.triton import moe

    return moe.fused_moe(x, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids, block_size=(block_n, block_k),
                         scale_fmt=scale_fmt, out_dtype=torch.float32)


def _moe_deepgemm(x, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids, scale_fmt, align_m, masked_max_tokens,
                  fused_quant):
    from blockfp8.kernels import deepgemm, deepgemm_moe

    module, why = deepgemm.load_cached()
    if module is None:
        raise RuntimeError(f"deepgemm: {why}")
    return deepgemm_moe.fused_moe(module, x, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids,
                                  scale_fmt=scale_fmt, align_m=align_m, masked_max_tokens=masked_max_tokens,
                                  fused_quant=fused_quant)


def _moe_deepgemm_fake(x, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids, scale_fmt, align_m,
                       masked_max_tokens, fused_quant):
    return _moe_fake(x, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids, 128, 128, scale_fmt)


def _moe_fake(x, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids, block_n, block_k, scale_fmt):
    _check(x.dim() == 2, f"moe: expected x [T, H], got shape {tuple(x.shape)}")
    _check(w13.dim() == 3 and w2.dim() == 3 and w13.shape[2] == x.shape[1] == w2.shape[1],
           f"moe: w13 {tuple(w13.shape)} / w2 {tuple(w2.shape)} do not fit hidden {x.shape[1]}")
    _check(topk_ids.shape == topk_weights.shape and topk_ids.shape[0] == x.shape[0],
           f"moe: topk_ids {tuple(topk_ids.shape)} / topk_weights {tuple(topk_weights.shape)} must be [T, k]")
    return x.new_empty(x.shape, dtype=torch.float32)


_register("quantize_act", _quantize_act, _quantize_act_fake)
_register("gemm_reference", _gemm_reference, _gemm_reference_fake)
_register("gemm_triton", _gemm_triton, _gemm_triton_fake)
_register("gemm_scaled_mm", _gemm_scaled_mm, _gemm_scaled_mm_fake)
_register("gemm_cute", _gemm_cute, _gemm_cute_fake)
_register("gemm_deepgemm", _gemm_deepgemm, _gemm_deepgemm_fake)
_register("moe_reference", _moe_reference, _moe_reference_fake)
_register("moe_triton", _moe_triton, _moe_fake)
_register("moe_deepgemm", _moe_deepgemm, _moe_deepgemm_fake)

ops = torch.ops.blockfp8
