"""End-to-end level: the model's next-token distribution unquantized vs FP8 with float32 vs UE8M0 scales.

Every ``nn.Linear`` except ``lm_head`` has its forward replaced, for the duration of one pass, by
``gemm_reference(quantize_act(x, f), quantize_weight(W, f)) + bias`` from ``blockfp8.quant.reference`` (weights
quantized once per format; activations per call, 1x128 groups, float32 accumulation, output in the input's dtype).
That is the numerics of our FP8 kernels, simulated: the audit runs anywhere and never imports a GPU backend.

On held-out windows it measures, per token, the KL divergence from the unquantized model's distribution, top-1
agreement with it and the next-token negative log-likelihood; sums per window feed a paired bootstrap over windows
(the same resampled windows for every variant) for 95% intervals of each mean and of the UE8M0-vs-float32 deltas.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from blockfp8.audit.weights import UNQUANTIZED_LINEARS, linear_modules
from blockfp8.quant import reference as ref

VARIANTS = ("base", "fp32", "ue8m0")  # unquantized, FP8 with float32 scales, FP8 with UE8M0 scales
_FMT = {"fp32": "float32", "ue8m0": "ue8m0"}


class FP8Simulator:
    """Quantized copies of every linear weight, in both scale formats, and a context that swaps the forwards."""

    def __init__(self, model: torch.nn.Module, block: Sequence[int] = (128, 128),
                 skip: Sequence[str] = UNQUANTIZED_LINEARS):
        self.block = ref.normalize_block_size(block)
        self.modules = linear_modules(model, skip)
        self.weights = {
            f: [ref.quantize_weight(m.weight.detach().float(), self.block, f, name=n) for n, m in self.modules]
            for f in ref.SCALE_FMTS
        }

    @contextlib.contextmanager
    def active(self, scale_fmt: str) -> Iterator[None]:
        saved = []
        bk = self.block[1]
        try:
            for (_, m), (wq, ws) in zip(self.modules, self.weights[scale_fmt], strict=True):
                saved.append((m, m.__dict__.get("forward")))

                def forward(x, m=m, wq=wq, ws=ws):
                    xq, xs = ref.quantize_act(x, bk, scale_fmt)
                    return ref.gemm_reference(xq, xs, wq, ws, self.block, out_dtype=x.dtype, bias=m.bias)

                m.forward = forward
            yield
        finally:
            for m, previous in saved:
                if previous is None:
                    del m.forward
                else:
                    m.forward = previous


def _window_sums(lp_base: torch.Tensor, lp: torch.Tensor, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    kl = (lp_base.exp() * (lp_base - lp)).sum(-1)  # [B, L]
    agree = (lp.argmax(-1) == lp_base.argmax(-1)).to(torch.float64)
    nll = -lp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    return {"kl": kl.double().sum(1), "agree": agree.sum(1), "nll": nll.double().sum(1)}


@torch.no_grad()
def measure(
    model: torch.nn.Module,
    ids: torch.Tensor,
    block: Sequence[int] = (128, 128),
    *,
    batch_size: int = 4,
    skip: Sequence[str] = UNQUANTIZED_LINEARS,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> dict[str, np.ndarray]:
    """Per-window sums for every variant: ``nll_<v>`` (over seq_len-1 targets), ``kl_<v>`` and ``agree_<v>``
    (over seq_len positions) for v in fp32/ue8m0, and ``nll_base``."""
    sim = FP8Simulator(model, block, skip)
    device = next(model.parameters()).device
    sums: dict[str, list[torch.Tensor]] = {}
    batches = range(0, ids.shape[0], batch_size)
    for i in progress(batches) if progress else batches:
        x = ids[i : i + batch_size].to(device)
        lp_base = torch.log_softmax(model(input_ids=x, use_cache=False).logits.float(), -1)
        nll = -lp_base[:, :-1].gather(-1, x[:, 1:, None]).squeeze(-1)
        sums.setdefault("nll_base", []).append(nll.double().sum(1).cpu())
        for v in ("fp32", "ue8m0"):
            with sim.active(_FMT[v]):
                lp = torch.log_softmax(model(input_ids=x, use_cache=False).logits.float(), -1)
            for key, val in _window_sums(lp_base, lp, x).items():
                sums.setdefault(f"{key}_{v}", []).append(val.cpu())
            del lp
        del lp_base
    return {k: torch.cat(v).numpy() for k, v in sums.items()}


def _stats(s: dict[str, np.ndarray], idx: np.ndarray, n_pos: int) -> dict[str, np.ndarray]:
    """Means over the windows ``idx`` (rows: bootstrap resamples)."""
    def tot(key):
        return s[key][idx].sum(-1)

    n = idx.shape[-1]
    pos, tgt = n * n_pos, n * (n_pos - 1)
    out = {"ppl_base": np.exp(tot("nll_base") / tgt)}
    for v in ("fp32", "ue8m0"):
        out[f"ppl_{v}"] = np.exp(tot(f"nll_{v}") / tgt)
        out[f"kl_{v}"] = tot(f"kl_{v}") / pos
        out[f"top1_{v}"] = tot(f"agree_{v}") / pos
    out["ppl_increase"] = out["ppl_ue8m0"] / out["ppl_fp32"] - 1.0
    kl32 = np.maximum(out["kl_fp32"], np.finfo(np.float64).tiny)
    out["kl_increase"] = out["kl_ue8m0"] / kl32 - 1.0
    out["top1_change"] = out["top1_ue8m0"] - out["top1_fp32"]
    return out


def summarize(sums: dict[str, np.ndarray], seq_len: int, n_boot: int = 2000, seed: int = 0) -> dict:
    """Point estimates and paired-bootstrap 95% intervals (percentile) over windows."""
    n = len(sums["nll_base"])
    point = {k: float(v[0]) for k, v in _stats(sums, np.arange(n)[None, :], seq_len).items()}
    rng = np.random.default_rng(seed)
    boot = _stats(sums, rng.integers(0, n, size=(n_boot, n)), seq_len)
    ci = {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in boot.items()}

    def block(keys: Iterable[str]) -> dict:
        d = {}
        for k in keys:
            d[k], d[f"{k}_ci"] = point[k], ci[k]
        return d

    result = {
        "windows": n,
        "seq_len": seq_len,
        "tokens": n * seq_len,
        "bootstrap": {"resamples": n_boot, "seed": seed, "unit": "window", "interval": "percentile 95%"},
        "base": block(["ppl_base"]),
        "fp32": block(["ppl_fp32", "kl_fp32", "top1_fp32"]),
        "ue8m0": block(["ppl_ue8m0", "kl_ue8m0", "top1_ue8m0"]),
        "ue8m0_vs_fp32": block(["ppl_increase", "kl_increase", "top1_change"]),
    }
    _check_finite(result)
    return result


def _check_finite(obj, path: str = "e2e") -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_finite(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _check_finite(v, f"{path}[{i}]")
    elif isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"{path} is not finite ({obj}); the model's outputs contain NaN or Inf")
