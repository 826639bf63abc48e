"""Checkpoints of a real model's size without its data: the safetensors headers of the real tensor list (names,
dtypes, shapes, sharding, index) over sparse files, so a 680 GB DeepSeek-V3-shaped checkpoint costs a few MB of
disk. Everything that works from headers alone (opening, pairing, planning) runs on it at full scale; tensor
values read as zeros.

``python -m blockfp8.testing.sparse OUT_DIR [--kind fp8|bf16]`` writes the DeepSeek-V3 layout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
from collections.abc import Iterator
from pathlib import Path

from blockfp8.formats.quant_config import fp8_quant_config_dict

_ITEMSIZE = {"F8_E4M3": 1, "BF16": 2, "F32": 4}

# DeepSeek-V3 (config.json of deepseek-ai/DeepSeek-V3): MLA attention, 3 dense layers then 58 MoE layers of 256
# routed experts and one shared expert, 128x128 FP8 blocks.
DEEPSEEK_V3 = {
    "model_type": "deepseek_v3", "num_hidden_layers": 61, "first_k_dense_replace": 3, "hidden_size": 7168,
    "intermediate_size": 18432, "moe_intermediate_size": 2048, "n_routed_experts": 256, "n_shared_experts": 1,
    "num_attention_heads": 128, "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64, "v_head_dim": 128, "vocab_size": 129280,
}


def deepseek_v3_tensors(fp8: bool = True) -> Iterator[tuple[str, str, tuple[int, ...]]]:
    """``(name, dtype code, shape)`` of every tensor of a DeepSeek-V3 checkpoint (without the MTP layer): linear
    weights in F8_E4M3 with F32 ``weight_scale_inv`` when ``fp8``, else BF16."""
    c = DEEPSEEK_V3
    h, heads = c["hidden_size"], c["num_attention_heads"]
    qk = c["qk_nope_head_dim"] + c["qk_rope_head_dim"]

    def linear(prefix: str, n: int, k: int):
        if fp8:
            yield f"{prefix}.weight", "F8_E4M3", (n, k)
            yield f"{prefix}.weight_scale_inv", "F32", (math.ceil(n / 128), math.ceil(k / 128))
        else:
            yield f"{prefix}.weight", "BF16", (n, k)

    def mlp(prefix: str, inter: int):
        yield from linear(f"{prefix}.gate_proj", inter, h)
        yield from linear(f"{prefix}.up_proj", inter, h)
        yield from linear(f"{prefix}.down_proj", h, inter)

    yield "model.embed_tokens.weight", "BF16", (c["vocab_size"], h)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}"
        yield f"{p}.input_layernorm.weight", "BF16", (h,)
        yield f"{p}.post_attention_layernorm.weight", "BF16", (h,)
        a = f"{p}.self_attn"
        yield from linear(f"{a}.q_a_proj", c["q_lora_rank"], h)
        yield f"{a}.q_a_layernorm.weight", "BF16", (c["q_lora_rank"],)
        yield from linear(f"{a}.q_b_proj", heads * qk, c["q_lora_rank"])
        yield from linear(f"{a}.kv_a_proj_with_mqa", c["kv_lora_rank"] + c["qk_rope_head_dim"], h)
        yield f"{a}.kv_a_layernorm.weight", "BF16", (c["kv_lora_rank"],)
        yield from linear(f"{a}.kv_b_proj", heads * (c["qk_nope_head_dim"] + c["v_head_dim"]), c["kv_lora_rank"])
        yield from linear(f"{a}.o_proj", h, heads * c["v_head_dim"])
        if i < c["first_k_dense_replace"]:
            yield from mlp(f"{p}.mlp", c["intermediate_size"])
            continue
        yield f"{p}.mlp.gate.weight", "BF16", (c["n_routed_experts"], h)
        yield f"{p}.mlp.gate.e_score_correction_bias", "F32", (c["n_routed_experts"],)
        for e in range(c["n_routed_experts"]):
            yield from mlp(f"{p}.mlp.experts.{e}", c["moe_intermediate_size"])
        yield from mlp(f"{p}.mlp.shared_experts", c["moe_intermediate_size"] * c["n_shared_experts"])
    yield "model.norm.weight", "BF16", (h,)
    yield "lm_head.weight", "BF16", (c["vocab_size"], h)


def write_sparse_safetensors(path: str | Path, tensors: list[tuple[str, str, tuple[int, ...]]]) -> int:
    """A safetensors file whose header lists ``tensors`` and whose data section is a hole of the right length.
    Returns the file's (apparent) size in bytes."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    pos = 0
    for name, code, shape in tensors:
        nbytes = math.prod(shape) * _ITEMSIZE[code]
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
        pos += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + pos)
    return 8 + len(raw) + pos


def write_sparse_checkpoint(folder: str | Path, tensors: list[tuple[str, str, tuple[int, ...]]], *,
                            shards: int, config: dict) -> Path:
    """``tensors`` split into ``shards`` sparse safetensors files with an index and ``config.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    per = math.ceil(len(tensors) / shards)
    weight_map, total = {}, 0
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = tensors[s * per:(s + 1) * per]
        total += write_sparse_safetensors(folder / name, part)
        weight_map.update({t[0]: name for t in part})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def write_deepseek_v3(folder: str | Path, fp8: bool = True, shards: int = 163) -> Path:
    """The DeepSeek-V3 layout (its release has 163 shards) as a sparse checkpoint."""
    config = dict(DEEPSEEK_V3)
    if fp8:
        config["quantization_config"] = fp8_quant_config_dict((128, 128))
    return write_sparse_checkpoint(folder, list(deepseek_v3_tensors(fp8)), shards=shards, config=config)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="folder to write")
    p.add_argument("--kind", choices=("fp8", "bf16"), default="fp8")
    args = p.parse_args(argv)
    folder = write_deepseek_v3(args.out, fp8=args.kind == "fp8")
    n = len(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"])
    used = sum(os.stat(f).st_blocks * 512 for f in folder.iterdir())
    print(f"{folder}: {n} tensors, {used / 2**20:.1f} MiB on disk")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
