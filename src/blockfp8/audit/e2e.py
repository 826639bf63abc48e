"""End-to-end level: the model's next-token distribution unquantized vs FP8 with float32 vs UE8M0 scales, and
vs any mixed per-layer plan (UE8M0 everywhere except the layers a plan keeps on float32 scales).

Every ``nn.Linear`` except ``lm_head`` has its forward replaced, for the duration of one pass, by
``gemm_reference(quantize_act(x, f), quantize_weight(W, f)) + bias`` from ``blockfp8.quant.reference`` (weights
quantized once per format; activations per call, 1x128 groups, float32 accumulation, output in the input's dtype).
That is the numerics of our FP8 kernels, simulated: the audit runs anywhere and never imports a GPU backend.

On held-out windows it measures, per token, the KL divergence from the unquantized model's distribution, top-1
agreement with it, next-token accuracy (argmax = the text's next token) and the next-token negative
log-likelihood; sums per window feed a paired bootstrap over windows (the same resampled windows for every
variant) for 95% intervals of each mean and of every variant's deltas against FP8 with float32 scales.

The rounding floor (``roundings``): all-float32 again with every weight rounded anew at the same precision (each
block's scale is amax/448 or, for a random half of the blocks, amax/416; both are E4M3 values, so every block's
largest weight stays exact as with float32 scales). What such a re-rounding alone moves is the size below which a
difference between two FP8 variants is rounding luck, not scale format (docs/audit.md).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from blockfp8.audit.weights import UNQUANTIZED_LINEARS, linear_modules
from blockfp8.quant import reference as ref

VARIANTS = ("base", "fp32", "ue8m0")  # unquantized, FP8 with float32 scales, FP8 with UE8M0 scales
_FMT = {"fp32": "float32", "ue8m0": "ue8m0"}
ROUNDING = "fp32r"  # e2e variant fp32r<seed>: all-float32 with the weights rounded anew (the rounding floor)


def rounding_tops(shape: Sequence[int], block: Sequence[int], gen: torch.Generator) -> torch.Tensor:
    """One rounding of a weight of ``shape`` [N, K]: per block 416 or 448 (the value its largest weight maps to),
    each with probability 1/2 from ``gen``."""
    bn, bk = ref.normalize_block_size(block)
    gn, gk = ref.cdiv(shape[0], bn), ref.cdiv(shape[1], bk)
    return torch.where(torch.rand((gn, gk), generator=gen) < 0.5, 416.0, 448.0)


def rerounded_weight(w: torch.Tensor, block: Sequence[int], gen: torch.Generator | None = None, *,
                     top: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``w[N, K]`` quantized with float32 scales of the same precision but another rounding: each block's scale is
    amax/448 or, for a random half of the blocks (``gen``, or the blocks' ``top`` from ``rounding_tops``),
    amax/416. 416 and 448 are E4M3 values, so the block's largest weight stays exact; every other weight lands on
    a grid up to 448/416 coarser, so it rounds anew."""
    bn, bk = ref.normalize_block_size(block)
    n, k = w.shape
    gn, gk = ref.cdiv(n, bn), ref.cdiv(k, bk)
    if top is None:
        top = rounding_tops(w.shape, block, gen)
    blocks = torch.nn.functional.pad(w.float(), (0, gk * bk - k, 0, gn * bn - n)).view(gn, bn, gk, bk)
    amax = blocks.abs().amax(dim=(1, 3)).clamp(min=ref.WEIGHT_EPS)
    scale = amax / top.to(w.device)
    fmax = ref.fp8_max(torch.float8_e4m3fn)
    q = (blocks / scale[:, None, :, None]).clamp(-fmax, fmax).to(torch.float8_e4m3fn)
    return q.view(gn * bn, gk * bk)[:n, :k].contiguous(), scale


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
        self.roundings: dict[str, list[torch.Tensor]] = {}  # key -> each layer's rounding_tops

    def active(self, scale_fmt: str) -> contextlib.AbstractContextManager[None]:
        """Every layer on ``scale_fmt`` scales (weights and activations); a key from ``add_rounding`` runs
        all-float32 with that rounding of the weights."""
        return self._swapped([scale_fmt] * len(self.modules))

    def add_rounding(self, seed: int) -> str:
        """Another float32-scale rounding of every weight (``rerounded_weight``); returns the key ``active``
        takes. Activations stay quantized as with float32 scales. Only the choice per block is kept: each call
        quantizes its layer's weight anew, so a rounding holds no copy of the weights (a large model's audit
        holds two already)."""
        key = f"float32@{seed}"
        gen = torch.Generator().manual_seed(seed)
        self.roundings[key] = [rounding_tops(m.weight.shape, self.block, gen).to(m.weight.device)
                               for _, m in self.modules]
        return key

    def active_plan(self, float32_layers: Collection[str]) -> contextlib.AbstractContextManager[None]:
        """A mixed plan: float32 scales for the layers named in ``float32_layers``, UE8M0 scales for the rest."""
        unknown = set(float32_layers) - {n for n, _ in self.modules}
        if unknown:
            raise ValueError(f"plan names layers the model does not have: {', '.join(sorted(unknown)[:3])}")
        return self._swapped(["float32" if n in float32_layers else "ue8m0" for n, _ in self.modules])

    @contextlib.contextmanager
    def _swapped(self, formats: Sequence[str]) -> Iterator[None]:
        saved = []
        bk = self.block[1]
        try:
            for i, ((_, m), f) in enumerate(zip(self.modules, formats, strict=True)):
                tops = self.roundings.get(f)  # a rounding: its layer weight is quantized per call
                stored, top = (None, tops[i]) if tops else (self.weights[f][i], None)
                saved.append((m, m.__dict__.get("forward")))
                act = f.split("@")[0]  # a rounding key quantizes activations as its format does

                def forward(x, m=m, stored=stored, top=top, f=act):
                    wq, ws = stored or rerounded_weight(m.weight.detach(), self.block, top=top)
                    xq, xs = ref.quantize_act(x, bk, f)
                    return ref.gemm_reference(xq, xs, wq, ws, self.block, out_dtype=x.dtype, bias=m.bias)

                m.forward = forward
            yield
        finally:
            for m, previous in saved:
                if previous is None:
                    del m.forward
                else:
                    m.forward = previous


def log_probs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(model(input_ids=x, use_cache=False).logits.float(), -1)


def window_sums(lp_base: torch.Tensor, lp: torch.Tensor, ids: torch.Tensor,
                targets: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-window sums of KL to the unquantized model, top-1 agreement with it (seq_len positions), and
    next-token NLL and accuracy (seq_len - 1 targets); with ``targets`` (bool, like ``ids``: the tokens of the
    passages' target words) also the NLL of predicting those tokens (``tnll``) and the KL at the positions that
    predict them (``tkl``)."""
    kl = (lp_base.exp() * (lp_base - lp)).sum(-1)  # [B, L]
    top1 = lp.argmax(-1)
    agree = (top1 == lp_base.argmax(-1)).to(torch.float64)
    nll = -lp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    hit = (top1[:, :-1] == ids[:, 1:]).to(torch.float64)
    out = {"kl": kl.double().sum(1), "agree": agree.sum(1), "nll": nll.double().sum(1), "hit": hit.sum(1)}
    if targets is not None:
        t = targets[:, 1:].to(torch.float64)
        out["tnll"] = (nll.double() * t).sum(1)
        out["tkl"] = (kl[:, :-1].double() * t).sum(1)
    return out


@torch.no_grad()
def measure(
    model: torch.nn.Module,
    ids: torch.Tensor,
    block: Sequence[int] = (128, 128),
    *,
    batch_size: int = 4,
    skip: Sequence[str] = UNQUANTIZED_LINEARS,
    plans: Mapping[str, Collection[str]] | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
    targets: torch.Tensor | None = None,
    roundings: int = 0,
) -> dict[str, np.ndarray]:
    """Per-window sums for every variant: ``nll_<v>`` and ``hit_<v>`` (over seq_len-1 targets), ``kl_<v>`` and
    ``agree_<v>`` (over seq_len positions) for v in fp32, ue8m0 and each of ``plans`` (name -> the layers it keeps
    on float32 scales); ``nll_base`` and ``hit_base`` for the unquantized model. With ``targets`` (``text.Windows
    .targets``) also ``tnll_<v>`` / ``tnll_base``, ``tkl_<v>`` and the target tokens per window, ``tn``.
    ``roundings``: that many more variants ``fp32r1``, ``fp32r2``, ...: all-float32 rounded anew (the rounding
    floor, ``rerounded_weight``)."""
    sim = FP8Simulator(model, block, skip)
    plans = dict(plans or {})
    for name in plans:
        if name in VARIANTS or name.startswith(ROUNDING):
            raise ValueError(f"plan name {name!r} is taken by a built-in variant ({', '.join(VARIANTS)}, "
                             f"{ROUNDING}<seed>)")
    contexts = {v: (lambda v=v: sim.active(_FMT[v])) for v in _FMT}
    contexts.update({name: (lambda layers=layers: sim.active_plan(layers)) for name, layers in plans.items()})
    for seed in range(1, roundings + 1):
        key = sim.add_rounding(seed)
        contexts[f"{ROUNDING}{seed}"] = lambda key=key: sim.active(key)
    device = next(model.parameters()).device
    sums: dict[str, list[torch.Tensor]] = {}
    batches = range(0, ids.shape[0], batch_size)
    for i in progress(batches) if progress else batches:
        x = ids[i : i + batch_size].to(device)
        t = None if targets is None else targets[i : i + batch_size].to(device)
        if t is not None:
            sums.setdefault("tn", []).append(t[:, 1:].sum(1).double().cpu())
        lp_base = log_probs(model, x)
        for key, val in window_sums(lp_base, lp_base, x, t).items():
            if key in ("nll", "hit", "tnll"):
                sums.setdefault(f"{key}_base", []).append(val.cpu())
        for v, context in contexts.items():
            with context():
                lp = log_probs(model, x)
            for key, val in window_sums(lp_base, lp, x, t).items():
                sums.setdefault(f"{key}_{v}", []).append(val.cpu())
            del lp
        del lp_base
    return {k: torch.cat(v).numpy() for k, v in sums.items()}


def variants_of(sums: Mapping[str, np.ndarray]) -> list[str]:
    """The FP8 variants measured in ``sums``: fp32, ue8m0, then the plans in the order measured."""
    return [k[len("kl_"):] for k in sums if k.startswith("kl_")]


def _stats(s: Mapping[str, np.ndarray], idx: np.ndarray, n_pos: int) -> dict[str, np.ndarray]:
    """Means over the windows ``idx`` (rows: bootstrap resamples)."""
    def tot(key):
        return s[key][idx].sum(-1)

    n = idx.shape[-1]
    pos, tgt = n * n_pos, n * (n_pos - 1)
    out = {"ppl_base": np.exp(tot("nll_base") / tgt)}
    if "hit_base" in s:
        out["acc_base"] = tot("hit_base") / tgt
    variants = variants_of(s)
    for v in variants:
        out[f"ppl_{v}"] = np.exp(tot(f"nll_{v}") / tgt)
        out[f"kl_{v}"] = tot(f"kl_{v}") / pos
        out[f"top1_{v}"] = tot(f"agree_{v}") / pos
        if f"hit_{v}" in s:
            out[f"acc_{v}"] = tot(f"hit_{v}") / tgt
    words = _has_target_words(s)
    if words:  # every window holds target tokens, so no resample divides by zero
        out["tppl_base"] = np.exp(tot("tnll_base") / tot("tn"))
        for v in variants:
            out[f"tppl_{v}"] = np.exp(tot(f"tnll_{v}") / tot("tn"))
            if f"tkl_{v}" in s:
                out[f"tkl_{v}"] = tot(f"tkl_{v}") / tot("tn")
    kl32 = np.maximum(out["kl_fp32"], np.finfo(np.float64).tiny)
    for v in variants:
        if v == "fp32":
            continue
        out[f"{v}:ppl_increase"] = out[f"ppl_{v}"] / out["ppl_fp32"] - 1.0
        out[f"{v}:kl_increase"] = out[f"kl_{v}"] / kl32 - 1.0
        out[f"{v}:top1_change"] = out[f"top1_{v}"] - out["top1_fp32"]
        if f"acc_{v}" in out:
            out[f"{v}:acc_change"] = out[f"acc_{v}"] - out["acc_fp32"]
        if words:
            out[f"{v}:target_ppl_increase"] = out[f"tppl_{v}"] / out["tppl_fp32"] - 1.0
            if f"tkl_{v}" in out:
                out[f"{v}:target_kl_increase"] = out[f"tkl_{v}"] / np.maximum(out["tkl_fp32"],
                                                                               np.finfo(np.float64).tiny) - 1.0
            if v != "ue8m0":
                out[f"{v}:target_ppl_vs_ue8m0"] = out[f"tppl_{v}"] / out["tppl_ue8m0"] - 1.0
    return out


def _has_target_words(s: Mapping[str, np.ndarray]) -> bool:
    return "tn" in s and bool(np.all(s["tn"] > 0))


def summarize(sums: Mapping[str, np.ndarray], seq_len: int, n_boot: int = 2000, seed: int = 0) -> dict:
    """Point estimates and paired-bootstrap 95% intervals (percentile) over windows: a block per variant
    (``base``, ``fp32``, ``ue8m0``, each plan) and ``<v>_vs_fp32`` for every FP8 variant but fp32."""
    n = len(sums["nll_base"])
    point = {k: float(v[0]) for k, v in _stats(sums, np.arange(n)[None, :], seq_len).items()}
    rng = np.random.default_rng(seed)
    boot = _stats(sums, rng.integers(0, n, size=(n_boot, n)), seq_len)
    ci = {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in boot.items()}

    def block(keys: Iterable[str], prefix: str = "") -> dict:
        d = {}
        for k in keys:
            if prefix + k in point:
                d[k], d[f"{k}_ci"] = point[prefix + k], ci[prefix + k]
        return d

    result = {
        "windows": n,
        "seq_len": seq_len,
        "tokens": n * seq_len,
        "bootstrap": {"resamples": n_boot, "seed": seed, "unit": "window", "interval": "percentile 95%"},
        "base": block(["ppl_base", "acc_base", "tppl_base"]),
    }
    if _has_target_words(sums):
        result["target_words"] = {"tokens": int(sums["tn"].sum()),
                                  "what": "tokens of each passage's LAMBADA target word; tppl_* = their "
                                          "perplexity, tkl_* = the mean KL at the positions that predict them"}
    for v in variants_of(sums):
        result[v] = block([f"ppl_{v}", f"kl_{v}", f"top1_{v}", f"acc_{v}", f"tppl_{v}", f"tkl_{v}"])
    for v in variants_of(sums):
        if v != "fp32":
            result[f"{v}_vs_fp32"] = block(["ppl_increase", "kl_increase", "top1_change", "acc_change",
                                            "target_ppl_increase", "target_ppl_vs_ue8m0", "target_kl_increase"],
                                           f"{v}:")
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
