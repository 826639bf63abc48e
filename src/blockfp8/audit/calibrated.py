"""Calibrated level: each linear layer's GEMM output error with float32 vs UE8M0 scales, on real activations.

The model runs on calibration text; a forward hook on every ``nn.Linear`` (``lm_head`` excluded: block-FP8
checkpoints leave it unquantized, ``weights.UNQUANTIZED_LINEARS``) takes the layer's input ``x`` and computes, in
float32 on the model's device:

* ``y = x @ W.T``, the unquantized product (bias left out: it is added unquantized on every path);
* ``y_f = gemm_reference(quantize_act(x, f), quantize_weight(W, f))`` for ``f`` in float32 and UE8M0 scales,
  i.e. ``blockfp8.quant.reference``: the numerics every FP8 kernel of ours is tested against (1x128 activation
  groups, 128x128 weight blocks, float32 accumulation). It simulates the kernels rather than running them; the
  audit must run on any machine and never imports a GPU backend;
* ``bits_f = log2(||y|| / ||y - y_f||)`` over all calibration tokens, and ``bits_lost = bits_fp32 - bits_ue8m0``.

To explain the loss it also reports the activation's and the weight's own quantization SNR in both formats, the
mean scale inflation (UE8M0 / float32 scale) of each, and activation outlier statistics: the largest magnitude,
the crest factor (max |x| / rms x), the number of outlier channels (rms above ``OUTLIER_FACTOR`` x the median
channel rms) and the group dominance (mean over 1x128 groups of max(x^2) / sum(x^2): 1 when one element carries
the whole group, 1/128 when all are equal). UE8M0 loses most where one element dominates a group.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import torch

from blockfp8.audit.measures import bits_from_power, inflation_histogram
from blockfp8.audit.weights import UNQUANTIZED_LINEARS, linear_modules
from blockfp8.quant import reference as ref

OUTLIER_FACTOR = 8.0


@dataclass(frozen=True)
class CalibratedRow:
    name: str
    shape: tuple[int, int]
    tokens: int
    bits_fp32: float
    bits_ue8m0: float
    bits_lost: float
    act_bits_fp32: float
    act_bits_ue8m0: float
    act_bits_lost: float
    weight_bits_fp32: float
    weight_bits_ue8m0: float
    weight_bits_lost: float
    act_scale_inflation_mean: float
    weight_scale_inflation_mean: float
    act_absmax: float
    act_crest: float
    act_outlier_channels: int
    act_group_dominance: float

    def as_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


class _Layer:
    """Float64 running sums for one linear layer (on the model's device)."""

    def __init__(self, name: str, module: torch.nn.Linear, block: tuple[int, int]):
        self.name, self.block = name, block
        w = module.weight.detach().to(torch.float32)
        self.w = w
        self.n, self.k = w.shape
        self.wq = {f: ref.quantize_weight(w, block, f, name=name) for f in ref.SCALE_FMTS}
        wd = {f: ref.dequantize_weight(*self.wq[f], block) for f in ref.SCALE_FMTS}
        wsig = float((w.double() ** 2).sum())
        self.weight_bits = {f: bits_from_power(wsig, float(((w - wd[f]).double() ** 2).sum())) for f in ref.SCALE_FMTS}
        winfl = self.wq["ue8m0"][1] / self.wq["float32"][1]
        self.weight_inflation_mean = float(winfl.double().mean())
        self.weight_hist = inflation_histogram(winfl)
        dev = w.device
        z = lambda: torch.zeros((), dtype=torch.float64, device=dev)  # noqa: E731
        self.tokens = 0
        self.sig, self.xsig = z(), z()
        self.err = {f: z() for f in ref.SCALE_FMTS}
        self.xerr = {f: z() for f in ref.SCALE_FMTS}
        self.absmax = torch.zeros((), dtype=torch.float32, device=dev)
        self.ch_sumsq = torch.zeros(self.k, dtype=torch.float64, device=dev)
        self.dominance, self.groups = z(), 0
        self.infl_sum, self.act_hist = z(), [0] * 64

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        bk = self.block[1]
        x = x.detach().reshape(-1, self.k).to(torch.float32)
        t = x.shape[0]
        if t == 0:
            return
        w = self.w
        y = x @ w.t()
        self.sig += (y.double() ** 2).sum()
        self.xsig += (x.double() ** 2).sum()
        scales = {}
        for f in ref.SCALE_FMTS:
            xq, xs = ref.quantize_act(x, bk, f)
            scales[f] = xs
            xd = ref.dequantize_act(xq, xs, bk)
            self.xerr[f] += ((x - xd).double() ** 2).sum()
            yf = ref.gemm_reference(xq, xs, *self.wq[f], self.block, out_dtype=torch.float32)
            self.err[f] += ((y - yf).double() ** 2).sum()
        infl = scales["ue8m0"] / scales["float32"]
        self.infl_sum += infl.double().sum()
        self.act_hist = [a + b for a, b in zip(self.act_hist, inflation_histogram(infl), strict=True)]
        self.absmax = torch.maximum(self.absmax, x.abs().max())
        self.ch_sumsq += (x.double() ** 2).sum(0)
        groups = ref.cdiv(self.k, bk)
        xg = torch.nn.functional.pad(x, (0, groups * bk - self.k)).view(t, groups, bk) ** 2
        energy = xg.sum(-1)
        dom = torch.where(energy > 0, xg.amax(-1) / energy.clamp(min=torch.finfo(torch.float32).tiny),
                          torch.zeros_like(energy))
        self.dominance += dom.double().sum()
        self.groups += t * groups
        self.tokens += t

    def row(self) -> CalibratedRow:
        sig, xsig = float(self.sig), float(self.xsig)
        bits = {f: bits_from_power(sig, float(self.err[f])) for f in ref.SCALE_FMTS}
        xbits = {f: bits_from_power(xsig, float(self.xerr[f])) for f in ref.SCALE_FMTS}
        rms_ch = (self.ch_sumsq / max(self.tokens, 1)).sqrt()
        med = float(rms_ch.median())
        rms = math.sqrt(float(self.ch_sumsq.sum()) / max(self.tokens * self.k, 1))
        return CalibratedRow(
            name=self.name,
            shape=(self.n, self.k),
            tokens=self.tokens,
            bits_fp32=bits["float32"],
            bits_ue8m0=bits["ue8m0"],
            bits_lost=bits["float32"] - bits["ue8m0"],
            act_bits_fp32=xbits["float32"],
            act_bits_ue8m0=xbits["ue8m0"],
            act_bits_lost=xbits["float32"] - xbits["ue8m0"],
            weight_bits_fp32=self.weight_bits["float32"],
            weight_bits_ue8m0=self.weight_bits["ue8m0"],
            weight_bits_lost=self.weight_bits["float32"] - self.weight_bits["ue8m0"],
            act_scale_inflation_mean=float(self.infl_sum) / max(self.groups, 1),
            weight_scale_inflation_mean=self.weight_inflation_mean,
            act_absmax=float(self.absmax),
            act_crest=float(self.absmax) / rms if rms > 0 else 0.0,
            act_outlier_channels=int((rms_ch > OUTLIER_FACTOR * med).sum()) if med > 0 else 0,
            act_group_dominance=float(self.dominance) / max(self.groups, 1),
        )


def decoder_of(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer body of an HF causal LM (no lm_head: its logits are not needed for calibration)."""
    prefix = getattr(model, "base_model_prefix", None)
    body = getattr(model, prefix, None) if prefix else None
    return body if isinstance(body, torch.nn.Module) else model


@torch.no_grad()
def audit_calibrated(
    model: torch.nn.Module,
    ids: torch.Tensor,
    block: Sequence[int] = (128, 128),
    *,
    batch_size: int = 8,
    skip: Sequence[str] = UNQUANTIZED_LINEARS,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> tuple[list[CalibratedRow], dict[str, list[int]]]:
    """Run ``model`` on ``ids[n, seq_len]`` and measure every linear layer (see the module docstring).

    Returns the rows in module order and the scale-inflation histograms (weights, activations) summed over layers.
    """
    block = ref.normalize_block_size(block)
    layers = [_Layer(n, m, block) for n, m in linear_modules(model, skip)]
    if not layers:
        raise ValueError("the model has no nn.Linear layers to audit")
    handles = [m.register_forward_hook(lambda mod, inp, out, layer=layer: layer.update(inp[0]))
               for layer, (_, m) in zip(layers, linear_modules(model, skip), strict=True)]
    device = next(model.parameters()).device
    body = decoder_of(model)
    batches = range(0, ids.shape[0], batch_size)
    try:
        for i in progress(batches) if progress else batches:
            body(input_ids=ids[i : i + batch_size].to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    hist_w = [sum(c) for c in zip(*(layer.weight_hist for layer in layers), strict=True)]
    hist_a = [sum(c) for c in zip(*(layer.act_hist for layer in layers), strict=True)]
    return [layer.row() for layer in layers], {"weights": hist_w, "activations": hist_a}
