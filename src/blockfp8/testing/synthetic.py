"""Synthetic block-FP8 checkpoints with known answers, for tests and for the audit's checkpoint-level speed
measurement (``python -m blockfp8.testing.synthetic OUT_DIR --shapes 7168x7168,...``).

Each weight is Gaussian; ``kind`` shapes its block maxima:

* ``gaussian``: nothing special, float32 scales are almost never powers of two;
* ``pow2``: every block's maximum is 448 * 2^k, so the float32 scales are already powers of two (UE8M0 loses 0);
* ``outlier``: one element per block carries most of its energy (300-600x the others' standard deviation). A
  float32 scale stores that element exactly (at 448); rounding the scale up re-rounds it, which costs the most.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from blockfp8.formats.quant_config import fp8_quant_config_dict
from blockfp8.quant import reference as ref

KINDS = ("gaussian", "pow2", "outlier")


def synthetic_weight(shape: Sequence[int], kind: str = "gaussian", block: Sequence[int] = (128, 128),
                     seed: int = 0) -> torch.Tensor:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: valid values: {', '.join(KINDS)}")
    g = torch.Generator().manual_seed(seed)
    n, k = shape
    bn, bk = block
    w = torch.randn(n, k, generator=g) * 0.02
    if kind == "pow2":
        top = 448.0 * 2.0**-12
        w = w.clamp(-top, top)
        w[::bn, ::bk] = top
    elif kind == "outlier":
        rows, cols = len(range(0, n, bn)), len(range(min(5, k - 1), k, bk))
        w[::bn, min(5, k - 1)::bk] = 0.02 * 300 * (1 + torch.rand(rows, cols, generator=g))
    return w


def write_fp8_checkpoint(folder: str | Path, weights: dict[str, torch.Tensor], block: Sequence[int] = (128, 128),
                         *, model_type: str = "llama", extra: dict[str, torch.Tensor] | None = None,
                         scale_dtype: torch.dtype = torch.float32) -> Path:
    """Quantize ``{module prefix: weight}`` with float32 block scales and write an HF ``fp8`` checkpoint folder
    (model.safetensors + config.json). ``extra`` tensors are stored as given (embeddings, norms, ...)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, w in weights.items():
        q, s = ref.quantize_weight(w, block, "float32", name=prefix)
        tensors[f"{prefix}.weight"] = q
        tensors[f"{prefix}.weight_scale_inv"] = s.to(scale_dtype)
    tensors.update(extra or {})
    save_file(tensors, str(folder / "model.safetensors"))
    config = {"model_type": model_type, "quantization_config": fp8_quant_config_dict(block)}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def gemm_anchor(m: int = 2048, k: int = 2048, n: int = 2048, seed: int = 0) -> dict[str, dict[str, float]]:
    """GEMM output SNR (bits) with float32 vs UE8M0 scales for Gaussian activations and for activations with one
    outlier column in ~330 scaled x30, Gaussian weights. The same case measured with our kernels on an H100
    (2048x7168 activations, 7168x7168 weights) gave 5.08 bits with float32 scales and 4.74 with UE8M0: the anchor
    ties the reference GEMM to that measurement without a GPU."""
    from blockfp8.quant import metrics

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    out = {}
    for label, outlier in (("gaussian", None), ("outlier_column_x30", 30.0)):
        x = torch.randn(m, k, generator=g)
        if outlier:
            x[:, ::330] *= outlier
        y = x @ w.t()
        bits = {}
        for f in ref.SCALE_FMTS:
            yq = ref.gemm_reference(*ref.quantize_act(x, 128, f), *ref.quantize_weight(w, (128, 128), f),
                                    out_dtype=torch.float32)
            bits[f] = metrics.snr_bits(y, yq)
        out[label] = {"bits_fp32": bits["float32"], "bits_ue8m0": bits["ue8m0"],
                      "bits_lost": bits["float32"] - bits["ue8m0"]}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", nargs="?", help="folder to write")
    p.add_argument("--anchor", action="store_true", help="instead: print the synthetic GEMM anchors (gemm_anchor)")
    p.add_argument("--shapes", default="7168x7168,2048x7168,7168x2048,18432x7168",
                   help="comma list of NxK (default: DeepSeek-V3-like)")
    p.add_argument("--kind", choices=KINDS, default="gaussian")
    args = p.parse_args(argv)
    if args.anchor:
        for label, r in gemm_anchor().items():
            print(f"{label}: float32 {r['bits_fp32']:.3f} bits, UE8M0 {r['bits_ue8m0']:.3f}, lost {r['bits_lost']:.3f}")
        return 0
    if not args.out:
        p.error("give the folder to write (or --anchor)")
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    weights = {f"model.layers.{i}.mlp.proj": synthetic_weight(s, args.kind, seed=i) for i, s in enumerate(shapes)}
    print(write_fp8_checkpoint(args.out, weights))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
