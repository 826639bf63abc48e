"""Benchmark shapes: DeepSeek-V3 linear (N, K) pairs, Qwen3-30B-A3B MoE, Qwen3-8B decoder config."""

from __future__ import annotations

# DeepSeek-V3 (N, K) of its block-FP8 linear layers (the list DeepGEMM and vLLM benchmark).
DEEPSEEK_V3_NK: tuple[tuple[int, int], ...] = (
    (2112, 7168), (576, 7168), (24576, 1536), (32768, 512), (7168, 16384), (4096, 7168), (7168, 2048),
)
GEMM_MS: tuple[int, ...] = (1, 16, 64, 128, 512, 4096)
DECODE_MAX_M = 64

# Qwen3-30B-A3B MoE block: 128 experts, top-8, hidden 2048, expert intermediate 768 (gate+up fused: 2 x 768).
QWEN3_30B_A3B_MOE = {"num_experts": 128, "top_k": 8, "hidden": 2048, "intermediate": 768}
# DeepSeek-V3 routed experts: 256 experts, top-8, hidden 7168, expert intermediate 2048.
DEEPSEEK_V3_MOE = {"num_experts": 256, "top_k": 8, "hidden": 7168, "intermediate": 2048}
MOE_TOKENS: tuple[int, ...] = (1, 16, 64, 256, 512, 4096, 16384)

# Qwen3-30B-A3B decoder (config.json of Qwen/Qwen3-30B-A3B), random weights.
QWEN3_30B_A3B = {
    "hidden_size": 2048, "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4,
    "head_dim": 128, "vocab_size": 151936, "rms_norm_eps": 1e-6, "num_experts": 128, "num_experts_per_tok": 8,
    "moe_intermediate_size": 768,
}

# Qwen3-8B decoder (config.json of Qwen/Qwen3-8B), random weights.
QWEN3_8B = {
    "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "rms_norm_eps": 1e-6,
}


def gemm_grid(ms=GEMM_MS, nks=DEEPSEEK_V3_NK) -> list[tuple[int, int, int]]:
    return [(m, n, k) for n, k in nks for m in ms]


def gemm_bytes(m: int, n: int, k: int, out_bytes: int = 2, block: int = 128) -> int:
    """Bytes a block-FP8 GEMM must move: A and W (fp8), their float32 scales, the output."""
    ga = -(-k // block)
    return m * k + n * k + 4 * (m * ga + -(-n // block) * ga) + out_bytes * m * n


def gemm_flops(m: int, n: int, k: int) -> int:
    return 2 * m * n * k
