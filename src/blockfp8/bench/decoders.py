"""Decoder stacks built from a config with random weights, for `blockfp8 bench model`: a dense one (Qwen3-8B-shaped)
and an MoE one (Qwen3-30B-A3B-shaped), each with bf16 or blockfp8 projections. The blockfp8 variants use the
library's own layers (``BlockFP8Linear``, ``BlockFP8Experts``) exactly as ``quantize_model`` builds them; the bf16
MoE is a grouped MoE on ``torch._grouped_mm`` with the routing on the device, the fair baseline for a fused MoE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from blockfp8.config import BlockFP8Config


def _weight(n: int, k: int, device: str) -> torch.Tensor:
    return torch.randn(n, k, device=device, dtype=torch.bfloat16) * k ** -0.5


class Bf16Linear(torch.nn.Module):
    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = w

    def forward(self, x):
        return F.linear(x, self.w)


def fp8_linear(w: torch.Tensor) -> torch.nn.Module:
    """The shipped layer: ``BlockFP8Linear`` quantized from ``w`` with float32 block scales, its backend chosen by
    the policy (DeepGEMM excluded: these runs compare our kernels and torch's blockwise scaled_mm with bf16)."""
    from blockfp8.nn import BlockFP8Linear

    linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, device=w.device, dtype=w.dtype)
    linear.weight.data.copy_(w)
    return BlockFP8Linear.from_linear(linear, BlockFP8Config(use_deep_gemm=False))


def rope_tables(pos, d, dtype, theta=1_000_000.0):
    """cos/sin [t, 1, d] (halves repeated), computed once per forward, not per layer."""
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, device=pos.device, dtype=torch.float32) / d))
    ang = pos[:, None].float() * inv[None, :]
    ang = torch.cat([ang, ang], dim=-1)[:, None, :]
    return ang.cos().to(dtype), ang.sin().to(dtype)


def _rope(x, cos, sin):
    d = x.shape[-1]
    rot = torch.cat([-x[..., d // 2:], x[..., : d // 2]], dim=-1)
    return x * cos + rot * sin


class Attention(torch.nn.Module):
    """Grouped-query attention with a fused qkv projection; a KV cache for decode (one new token per sequence)."""

    def __init__(self, cfg: dict, lin, device: str):
        super().__init__()
        h, hd = cfg["hidden_size"], cfg["head_dim"]
        self.nh, self.nkv, self.hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], hd
        self.qkv = lin(_weight((self.nh + 2 * self.nkv) * hd, h, device))
        self.o = lin(_weight(h, self.nh * hd, device))

    def forward(self, y, pos, cache=None):
        b, t, _ = y.shape
        qkv = self.qkv(y).view(b, t, self.nh + 2 * self.nkv, self.hd)
        qk = _rope(qkv[:, :, : self.nh + self.nkv], *pos)  # q and k heads in one pass
        q = qk[:, :, : self.nh].transpose(1, 2)
        k = qk[:, :, self.nh:].transpose(1, 2)
        v = qkv[:, :, self.nh + self.nkv:].transpose(1, 2)
        if cache is None:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            # Decode attends over the whole cache. The new token's K/V are not written into it: that write moves a few
            # KB, and leaving it out keeps the compiled graph free of input mutations (which would otherwise copy
            # the whole cache back each step), for bf16 and blockfp8 alike.
            kc, vc = cache
            a = F.scaled_dot_product_attention(q, kc, vc, enable_gqa=True)
        return self.o(a.transpose(1, 2).reshape(b, t, -1))


class Mlp(torch.nn.Module):
    def __init__(self, cfg: dict, lin, device: str):
        super().__init__()
        h, inter = cfg["hidden_size"], cfg["intermediate_size"]
        self.gate_up = lin(_weight(2 * inter, h, device))
        self.down = lin(_weight(h, inter, device))

    def forward(self, y):
        g, u = self.gate_up(y).chunk(2, dim=-1)
        return self.down(F.silu(g) * u)


def route(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax top-k routing, renormalised (Qwen3-MoE): (weights [T, k] float32, expert ids [T, k])."""
    weights, ids = torch.topk(torch.softmax(logits.float(), dim=-1), top_k, dim=-1)
    return weights / weights.sum(dim=-1, keepdim=True), ids


class Bf16GroupedMoE(torch.nn.Module):
    """bf16 experts through ``torch._grouped_mm``: tokens sorted by expert on the device, one grouped GEMM per
    projection, no host sync (so it is captured in a CUDA graph like the FP8 one)."""

    def __init__(self, w13: torch.Tensor, w2: torch.Tensor):
        super().__init__()
        self.w13_t = w13.transpose(1, 2)  # [E, H, 2I], the K-major operand _grouped_mm takes
        self.w2_t = w2.transpose(1, 2)  # [E, I, H]
        self.num_experts, self.inter = w13.shape[0], w2.shape[2]

    def forward(self, x, top_k_index, top_k_weights):
        t, k = top_k_index.shape
        flat = top_k_index.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.zeros(self.num_experts, dtype=torch.int32, device=x.device)
        counts.scatter_add_(0, flat.int(), torch.ones_like(flat, dtype=torch.int32))
        offs = torch.cumsum(counts, 0, dtype=torch.int32)
        token = order // k
        h = torch._grouped_mm(x[token], self.w13_t, offs=offs)
        a = F.silu(h[:, : self.inter]) * h[:, self.inter:]
        y = torch._grouped_mm(a, self.w2_t, offs=offs)
        y = y.float() * top_k_weights.reshape(-1)[order, None]
        return torch.zeros(x.shape, dtype=torch.float32, device=x.device).index_add_(0, token, y).to(x.dtype)


class MoeMlp(torch.nn.Module):
    """Router (bf16 in both variants, as engines keep it) and routed experts."""

    def __init__(self, cfg: dict, fp8: bool, device: str):
        super().__init__()
        e, h, inter = cfg["num_experts"], cfg["hidden_size"], cfg["moe_intermediate_size"]
        self.top_k = cfg["num_experts_per_tok"]
        self.router = _weight(e, h, device)
        w13 = torch.randn(e, 2 * inter, h, device=device, dtype=torch.bfloat16) * h ** -0.5
        w2 = torch.randn(e, h, inter, device=device, dtype=torch.bfloat16) * inter ** -0.5
        if fp8:
            from blockfp8.nn import BlockFP8Experts

            self.experts = BlockFP8Experts.from_fused(w13, w2, config=BlockFP8Config(use_deep_gemm=False))
        else:
            self.experts = Bf16GroupedMoE(w13, w2)

    def forward(self, y):
        b, t, h = y.shape
        y2 = y.reshape(-1, h)
        weights, ids = route(F.linear(y2, self.router), self.top_k)
        return self.experts(y2, ids, weights).view(b, t, h)


class Block(torch.nn.Module):
    def __init__(self, cfg: dict, lin, mlp: torch.nn.Module, device: str):
        super().__init__()
        self.attn = Attention(cfg, lin, device)
        self.mlp = mlp
        self.n1 = torch.ones(cfg["hidden_size"], device=device, dtype=torch.bfloat16)
        self.n2 = torch.ones(cfg["hidden_size"], device=device, dtype=torch.bfloat16)
        self.eps = cfg["rms_norm_eps"]

    def forward(self, x, pos, cache=None):
        x = x + self.attn(F.rms_norm(x, (x.shape[-1],), self.n1, self.eps), pos, cache)
        return x + self.mlp(F.rms_norm(x, (x.shape[-1],), self.n2, self.eps))


class Decoder(torch.nn.Module):
    """``layers`` blocks of ``cfg`` (dense when it has no ``num_experts``), bf16 embedding and tied head."""

    def __init__(self, cfg: dict, fp8: bool, layers: int, device: str = "cuda"):
        super().__init__()
        lin = fp8_linear if fp8 else Bf16Linear
        moe = "num_experts" in cfg
        self.layers = torch.nn.ModuleList(
            Block(cfg, lin, MoeMlp(cfg, fp8, device) if moe else Mlp(cfg, lin, device), device)
            for _ in range(layers))
        self.embed = torch.randn(cfg["vocab_size"], cfg["hidden_size"], device=device, dtype=torch.bfloat16)
        self.cfg = cfg

    def new_caches(self, batch: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        shape = (batch, self.cfg["num_key_value_heads"], length, self.cfg["head_dim"])
        dev = self.embed.device
        return [(torch.randn(shape, device=dev, dtype=torch.bfloat16), torch.randn(shape, device=dev,
                                                                                 dtype=torch.bfloat16))
                for _ in self.layers]

    def forward(self, ids, pos, caches=None):
        x = self.embed[ids]
        rope = rope_tables(pos, self.cfg["head_dim"], x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, None if caches is None else caches[i])
        return x[:, -1] @ self.embed.t()  # next-token logits (tied head, bf16 in both variants)
