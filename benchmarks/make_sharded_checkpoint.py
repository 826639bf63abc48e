"""Write a synthetic HF `fp8` checkpoint in several safetensors shards with `model.safetensors.index.json`
(float32 block scales, Gaussian weights with occasional outlier blocks), for the distributed audit run.

    python benchmarks/make_sharded_checkpoint.py DIR --shards 8 --layers 16
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from blockfp8.quant import reference as ref

SHAPES = {"q_proj": (4096, 4096), "o_proj": (4096, 4096), "up_proj": (12288, 4096), "down_proj": (4096, 12288)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--layers", type=int, default=16)
    args = ap.parse_args()
    out = Path(args.folder)
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device=device).manual_seed(0)
    names = [f"model.layers.{i}.{p}" for i in range(args.layers) for p in SHAPES]
    per_shard = -(-len(names) // args.shards)
    weight_map = {}
    for s in range(args.shards):
        tensors = {}
        for name in names[s * per_shard:(s + 1) * per_shard]:
            n, k = SHAPES[name.rsplit(".", 1)[1]]
            w = torch.randn(n, k, device=device, generator=g) * 0.02
            w[::512, 7::128] *= 40.0  # outlier blocks: their scales are far from a power of two
            q, sc = ref.quantize_weight(w, (128, 128), name=name)
            tensors[f"{name}.weight"], tensors[f"{name}.weight_scale_inv"] = q.cpu(), sc.cpu()
        fname = f"model-{s + 1:05d}-of-{args.shards:05d}.safetensors"
        save_file(tensors, str(out / fname))
        weight_map.update({t: fname for t in tensors})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
    qc = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
    (out / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": qc}, indent=1))
    print(f"wrote {len(names)} weights in {args.shards} shards to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
