"""Tensor-parallel block-FP8 decoder over NCCL: a Qwen3-8B-shaped model (config numbers, random weights) whose
linears are blockfp8 layers (`BlockFP8Linear` through the policy) sharded with `ColumnParallelBlockFP8Linear` /
`RowParallelBlockFP8Linear`: qkv and gate_up column-parallel (local heads, no gather), o and down row-parallel
(one all-reduce each). Embedding, norms and the tied lm_head are replicated bf16.

    torchrun --nproc-per-node 1 benchmarks/tp_decoder.py --out DIR            # TP=1: writes DIR/logits_tp1.pt
    torchrun --nproc-per-node 2 benchmarks/tp_decoder.py --out DIR            # TP=2: compares with TP=1

Measures prefill tokens/s (batch x seq), decode ms/token (batch 1, KV cache of --ctx tokens, eager: no CUDA graph
in either TP size), and the all-reduce share of a decode step and of a prefill (NCCL kernel time from the profiler
over the step's wall time). Correctness: last-token logits of TP=2 vs TP=1, next to the FP8 error itself (FP8
logits vs the same model with dequantized weights in bf16). Rank 0 appends rows to DIR/tp_decoder.csv and prints
them. Also shows the error a user gets when a partition would cut a 128-block. Keep NVLink multicast off:
NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from blockfp8.bench import results
from blockfp8.bench.decoders import _rope, rope_tables
from blockfp8.bench.shapes import QWEN3_8B
from blockfp8.config import BlockFP8Config
from blockfp8.nn import BlockFP8Linear
from blockfp8.nn.tp import BlockPartitionError, ColumnParallelBlockFP8Linear, RowParallelBlockFP8Linear
from blockfp8.quant import metrics
from blockfp8.quant import reference as ref
from blockfp8.testing.tolerances import E2E_CALC_DIFF


def fp8_layer(n: int, k: int, seed: int, name: str, config: BlockFP8Config) -> BlockFP8Linear:
    """Full (unsharded) layer, identical on every rank: seeded on the GPU, quantized with float32 block scales."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=g) * k**-0.5
    q, s = ref.quantize_weight(w, (128, 128), name=name)
    return BlockFP8Linear.from_fp8(q, s, None, config=config, name=name, process=False)


class TPLayer(torch.nn.Module):
    def __init__(self, cfg: dict, idx: int, tp: int, config: BlockFP8Config):
        super().__init__()
        h, inter, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
        nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.nh, self.nkv, self.hd = nh // tp, nkv // tp, hd
        seed = 1000 * idx
        qkv = fp8_layer((nh + 2 * nkv) * hd, h, seed + 1, f"layers.{idx}.qkv_proj", config)
        self.qkv = ColumnParallelBlockFP8Linear(qkv, output_sizes=[nh * hd, nkv * hd, nkv * hd], gather_output=False)
        self.o = RowParallelBlockFP8Linear(fp8_layer(h, nh * hd, seed + 2, f"layers.{idx}.o_proj", config),
                                           input_is_parallel=True)
        gate_up = fp8_layer(2 * inter, h, seed + 3, f"layers.{idx}.gate_up_proj", config)
        self.gate_up = ColumnParallelBlockFP8Linear(gate_up, output_sizes=[inter, inter], gather_output=False)
        self.down = RowParallelBlockFP8Linear(fp8_layer(h, inter, seed + 4, f"layers.{idx}.down_proj", config),
                                              input_is_parallel=True)
        self.n1 = torch.ones(h, device="cuda", dtype=torch.bfloat16)
        self.n2 = torch.ones(h, device="cuda", dtype=torch.bfloat16)
        self.eps = cfg["rms_norm_eps"]

    def forward(self, x, pos, cache=None, cache_len=0):
        b, t, _ = x.shape
        y = F.rms_norm(x, (x.shape[-1],), self.n1, self.eps)
        qkv = self.qkv(y).view(b, t, self.nh + 2 * self.nkv, self.hd)
        qk = _rope(qkv[:, :, : self.nh + self.nkv], *pos)
        q = qk[:, :, : self.nh].transpose(1, 2)
        k = qk[:, :, self.nh:].transpose(1, 2)
        v = qkv[:, :, self.nh + self.nkv:].transpose(1, 2)
        if cache is None:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            kc, vc = cache
            kc[:, :, cache_len: cache_len + t] = k
            vc[:, :, cache_len: cache_len + t] = v
            a = F.scaled_dot_product_attention(q, kc[:, :, : cache_len + t], vc[:, :, : cache_len + t],
                                               enable_gqa=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, -1))
        g, u = self.gate_up(F.rms_norm(x, (x.shape[-1],), self.n2, self.eps)).chunk(2, dim=-1)
        return x + self.down(F.silu(g) * u)


class TPDecoder(torch.nn.Module):
    def __init__(self, cfg: dict, tp: int, layers: int, config: BlockFP8Config):
        super().__init__()
        self.cfg = cfg
        self.layers = torch.nn.ModuleList()
        for i in range(layers):
            self.layers.append(TPLayer(cfg, i, tp, config))
            torch.cuda.empty_cache()  # the full unsharded layer is garbage now
        g = torch.Generator(device="cuda").manual_seed(7)
        self.embed = torch.randn(cfg["vocab_size"], cfg["hidden_size"], device="cuda", dtype=torch.bfloat16,
                                 generator=g)

    def forward(self, ids, pos, caches=None, cache_len=0):
        x = self.embed[ids]
        rope = rope_tables(pos, self.cfg["head_dim"], x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, None if caches is None else caches[i], cache_len)
        return x[:, -1] @ self.embed.t()


def dequantized_logits(model: TPDecoder, ids: torch.Tensor) -> torch.Tensor:
    """The same forward with every local FP8 linear replaced by a bf16 matmul of its *dequantized* weight (the
    all-reduces stay): the FP8 computation's own error (activation quantization, FP8 GEMM) is logits vs these."""
    layers = [m.local for m in model.modules() if isinstance(m, (ColumnParallelBlockFP8Linear,
                                                                  RowParallelBlockFP8Linear))]
    originals = [layer.forward for layer in layers]
    try:
        for layer in layers:
            def deq_forward(x, _layer=layer):
                w = ref.dequantize_weight(_layer.weight, _layer.weight_scale_inv, _layer.block_size, torch.bfloat16)
                return F.linear(x, w)

            layer.forward = deq_forward
        return model(ids, torch.arange(ids.shape[1], device=ids.device)).float()
    finally:
        for layer, forward in zip(layers, originals, strict=True):
            layer.forward = forward


def timed(fn, reps: int, warmup: int = 2) -> list[float]:
    """Wall time per call in seconds, every rank in step (barrier before each rep)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        dist.barrier()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out


def allreduce_share(fn, steps: int) -> float:
    """NCCL kernel time over wall time for `steps` calls of fn (includes waiting for the peer inside NCCL)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    nccl_us = sum(getattr(e, "self_device_time_total", 0.0) for e in prof.key_averages() if "nccl" in e.key.lower())
    return nccl_us * 1e-6 / wall


def show_partition_error(tp: int, config: BlockFP8Config) -> str:
    """A column-parallel layer of N=4224 (33 blocks) over 2 ranks would put 2112 rows on each: a cut block."""
    bad = fp8_layer(4224, 512, 99, "demo.bad_proj", config)
    try:
        ColumnParallelBlockFP8Linear(bad, gather_output=False)
    except BlockPartitionError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "accepted (tp=1: nothing to cut)" if tp == 1 else "NOT REFUSED"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=QWEN3_8B["num_hidden_layers"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()

    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    rank, tp = dist.get_rank(), dist.get_world_size()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg, config = QWEN3_8B, BlockFP8Config()

    partition = show_partition_error(tp, config)
    with torch.inference_mode():
        t_build = time.perf_counter()
        model = TPDecoder(cfg, tp, args.layers, config)
        t_build = time.perf_counter() - t_build
        backends = sorted({str(m.local.decision.backend) for m in model.modules() if hasattr(m, "local")})

        # correctness probe: same ids on every TP size, last-token logits
        g = torch.Generator(device="cuda").manual_seed(123)
        probe_ids = torch.randint(0, cfg["vocab_size"], (2, 64), device="cuda", generator=g)
        logits = model(probe_ids, torch.arange(64, device="cuda")).float()
        fp8_err = metrics.calc_diff(dequantized_logits(model, probe_ids), logits)

        ids = torch.randint(0, cfg["vocab_size"], (args.batch, args.seq), device="cuda", generator=g)
        pos = torch.arange(args.seq, device="cuda")
        prefill = timed(lambda: model(ids, pos), args.reps)
        pre_share = allreduce_share(lambda: model(ids, pos), 2)

        nkv, hd = cfg["num_key_value_heads"] // tp, cfg["head_dim"]
        caches = [(torch.randn(1, nkv, args.ctx + 1, hd, device="cuda", dtype=torch.bfloat16),
                   torch.randn(1, nkv, args.ctx + 1, hd, device="cuda", dtype=torch.bfloat16)) for _ in model.layers]
        tok = torch.randint(0, cfg["vocab_size"], (1, 1), device="cuda", generator=g)
        dpos = torch.tensor([args.ctx], device="cuda")
        decode = timed(lambda: model(tok, dpos, caches, args.ctx), args.reps * 6, warmup=3)
        dec_share = allreduce_share(lambda: model(tok, dpos, caches, args.ctx), 10)

    if rank == 0:
        ref_path = out / "logits_tp1.pt"
        if tp == 1:
            torch.save(logits.cpu(), ref_path)
            diff, max_rel = 0.0, 0.0
        else:
            base = torch.load(ref_path)
            diff = metrics.calc_diff(base, logits.cpu())
            max_rel = metrics.max_abs_error(base, logits.cpu()) / float(base.abs().max())
        pre_s, dec_s = statistics.median(prefill), statistics.median(decode)
        row = {
            "tp": tp, "layers": args.layers, "backends": "+".join(backends),
            "prefill_tokens_per_s": round(args.batch * args.seq / pre_s),
            "prefill_ms": round(pre_s * 1e3, 2), "prefill_allreduce_share": round(pre_share, 4),
            "decode_ms_per_token": round(dec_s * 1e3, 3), "decode_allreduce_share": round(dec_share, 4),
            "logits_calc_diff_vs_tp1": f"{diff:.3g}", "logits_max_rel_err_vs_tp1": f"{max_rel:.3g}",
            "logits_calc_diff_fp8_vs_dequant_bf16": f"{fp8_err:.3g}",
            "calc_diff_ok": diff < E2E_CALC_DIFF, "build_s": round(t_build, 1),
            "batch": args.batch, "seq": args.seq, "ctx": args.ctx, "partition_check": partition,
            **results.environment(),
        }
        path = out / "tp_decoder.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
        for key in ("tp", "backends", "prefill_tokens_per_s", "prefill_allreduce_share", "decode_ms_per_token",
                    "decode_allreduce_share", "logits_calc_diff_vs_tp1", "logits_calc_diff_fp8_vs_dequant_bf16",
                    "partition_check"):
            print(f"{key:26s} {row[key]}")
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
