"""`blockfp8 bench model`: a Qwen3-8B-shaped decoder (config numbers, random weights), its linears the library's
``BlockFP8Linear`` (automatic choice: per-shape dispatch between blockwise scaled_mm and our Triton kernel,
activations quantized by our Triton quantizer) vs the same model in bf16. Prefill: batch 8 x 2048 tokens, tokens/s.
Decode: batch 1 with a 2048-token KV cache, ms/token, each step replayed from a CUDA graph (both variants), as
serving engines run decode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from blockfp8.bench import results, shapes, timing


def fp8_linear(w: torch.Tensor) -> torch.nn.Module:
    """The shipped layer: ``BlockFP8Linear`` quantized from ``w`` with float32 block scales, its backend chosen by
    the policy (no DeepGEMM: the comparison is with torch's blockwise scaled_mm and our Triton kernel)."""
    from blockfp8.config import BlockFP8Config
    from blockfp8.nn import BlockFP8Linear

    linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, device=w.device, dtype=w.dtype)
    linear.weight.data.copy_(w)
    return BlockFP8Linear.from_linear(linear, BlockFP8Config(use_deep_gemm=False))


class Bf16Linear(torch.nn.Module):
    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = w

    def forward(self, x):
        return x @ self.w.t()


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


class Layer(torch.nn.Module):
    def __init__(self, cfg, lin):
        super().__init__()
        h, inter, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
        self.nh, self.nkv, self.hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], hd
        qkv_n = (self.nh + 2 * self.nkv) * hd

        def rnd(n, k):
            return (torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * k ** -0.5)

        self.qkv = lin(rnd(qkv_n, h))
        self.o = lin(rnd(h, self.nh * hd))
        self.gate_up = lin(rnd(2 * inter, h))
        self.down = lin(rnd(h, inter))
        self.n1 = torch.ones(h, device="cuda", dtype=torch.bfloat16)
        self.n2 = torch.ones(h, device="cuda", dtype=torch.bfloat16)
        self.eps = cfg["rms_norm_eps"]

    def forward(self, x, pos, cache=None, cache_len=0):
        b, t, _ = x.shape
        y = F.rms_norm(x, (x.shape[-1],), self.n1, self.eps)
        qkv = self.qkv(y).view(b, t, self.nh + 2 * self.nkv, self.hd)
        qk = _rope(qkv[:, :, : self.nh + self.nkv], *pos)  # q and k heads in one pass
        q = qk[:, :, : self.nh].transpose(1, 2)
        k = qk[:, :, self.nh:].transpose(1, 2)
        v = qkv[:, :, self.nh + self.nkv:].transpose(1, 2)
        if cache is None:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            kc, vc = cache  # decode (t == 1): grouped-query attention as two batched matmuls over the cache
            kc[:, :, cache_len: cache_len + t] = k
            vc[:, :, cache_len: cache_len + t] = v
            g = self.nh // self.nkv
            qg = q.reshape(b, self.nkv, g * t, self.hd)
            att = torch.softmax((qg @ kc[:, :, : cache_len + t].transpose(-1, -2)).float() * self.hd ** -0.5, -1)
            a = (att.to(qg.dtype) @ vc[:, :, : cache_len + t]).reshape(b, self.nh, t, self.hd)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, -1))
        gu = self.gate_up(F.rms_norm(x, (x.shape[-1],), self.n2, self.eps))
        g, u = gu.chunk(2, dim=-1)
        return x + self.down(F.silu(g) * u)


class Decoder(torch.nn.Module):
    def __init__(self, cfg, lin, layers=None):
        super().__init__()
        self.layers = torch.nn.ModuleList(Layer(cfg, lin) for _ in range(layers or cfg["num_hidden_layers"]))
        self.embed = torch.randn(cfg["vocab_size"], cfg["hidden_size"], device="cuda", dtype=torch.bfloat16)
        self.lm_head = self.embed  # tied, bf16 in both variants
        self.cfg = cfg

    def forward(self, ids, pos, caches=None, cache_len=0):
        x = self.embed[ids]
        pos = rope_tables(pos, self.cfg["head_dim"], x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, pos, None if caches is None else caches[i], cache_len)
        return x[:, -1] @ self.lm_head.t()


def bench_model(reps: int = 10, batch: int = 8, seq: int = 2048, ctx: int = 2048, layers: int | None = None,
                log=print) -> list[dict]:
    cfg = shapes.QWEN3_8B
    env = results.environment()
    rows = []
    meas: dict[str, dict[str, float]] = {}
    for name, lin in (("bf16", Bf16Linear), ("blockfp8", fp8_linear)):
        torch.manual_seed(0)
        with torch.inference_mode():
            model = Decoder(cfg, lin, layers)
            ids = torch.randint(0, cfg["vocab_size"], (batch, seq), device="cuda")
            pos = torch.arange(seq, device="cuda")
            pre = timing.time_interleaved({"prefill": lambda model=model, ids=ids, pos=pos: model(ids, pos)},
                                          reps=max(3, reps // 3), warmup=2, hide_launch_us=0)
            nkv, hd = cfg["num_key_value_heads"], cfg["head_dim"]
            caches = [(torch.randn(1, nkv, ctx + 1, hd, device="cuda", dtype=torch.bfloat16),
                       torch.randn(1, nkv, ctx + 1, hd, device="cuda", dtype=torch.bfloat16))
                      for _ in model.layers]
            tok = torch.randint(0, cfg["vocab_size"], (1, 1), device="cuda")
            dpos = torch.tensor([ctx], device="cuda")
            for _ in range(2):
                model(tok, dpos, caches, ctx)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                model(tok, dpos, caches, ctx)
            dec = timing.time_interleaved({"decode": graph.replay}, reps=reps * 3, warmup=3, hide_launch_us=0)
        meas[name] = {"prefill_us": timing.median(pre["prefill"]), "decode_us": timing.median(dec["decode"])}
        log(f"{name}: prefill {meas[name]['prefill_us'] / 1e3:.1f} ms for {batch}x{seq} tokens, "
            f"decode {meas[name]['decode_us'] / 1e3:.3f} ms/token")
        del model, caches, graph
        torch.cuda.empty_cache()
    for name, m in meas.items():
        rows.append({"bench": "model", "m": batch * seq, "variant": f"{name}_prefill", "us": m["prefill_us"],
                     "extra": f"{batch * seq / (m['prefill_us'] * 1e-6):.0f} tokens/s",
                     "speedup_vs_bf16": meas["bf16"]["prefill_us"] / m["prefill_us"], **env})
        rows.append({"bench": "model", "m": 1, "variant": f"{name}_decode", "us": m["decode_us"],
                     "extra": f"{m['decode_us'] / 1e3:.3f} ms/token (ctx {ctx})",
                     "speedup_vs_bf16": meas["bf16"]["decode_us"] / m["decode_us"], **env})
    return rows
