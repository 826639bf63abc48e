"""torch.compile takes the layers whole: no graph break, fullgraph=True compiles, compiled output equals eager, and
torch.export records the blockfp8 operators. On CPU through the reference backend; the GPU backends below (marked)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from blockfp8.config import BlockFP8Config
from blockfp8.nn import BlockFP8Linear, BlockFP8MoE
from tests.nn.test_moe import _block

BACKENDS_ON_GPU = ("triton", "scaled_mm", "reference")


def _linear(backend=None, n=256, k=384, bias=True, dtype=torch.float32, device="cpu"):
    torch.manual_seed(n + k)
    lin = nn.Linear(k, n, bias=bias, dtype=dtype, device=device)
    cfg = BlockFP8Config(linear_backend=backend) if backend else None
    return BlockFP8Linear.from_linear(lin, cfg)


def _breaks(module, *args) -> tuple[int, list]:
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(module)(*args)
    return explanation.graph_break_count, [str(r.reason)[:200] for r in explanation.break_reasons]


def _cxx_compiler_works() -> bool:
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception:  # noqa: BLE001 - InvalidCxxCompiler and friends: no usable compiler
        return False
    return True


@pytest.mark.parametrize("m", [1, 5, 67])
@torch.no_grad()
def test_linear_has_no_graph_break_and_compiles_bitwise(m):
    lin = _linear()
    x = torch.randn(3, m, 384)  # leading dims are flattened inside forward
    count, reasons = _breaks(lin, x)
    assert count == 0, reasons
    torch._dynamo.reset()
    compiled = torch.compile(lin, fullgraph=True)
    assert torch.equal(compiled(x), lin(x)), f"M={m}: compiled output differs from eager"


@torch.no_grad()
def test_moe_block_has_no_graph_break_and_compiles():
    moe = BlockFP8MoE.from_module(_block("qwen3_moe", 7, 256, 128, 4, 2))
    assert moe.experts.prepared_moe is not None, "the CPU MoE runs as one grouped operator"
    x = torch.randn(9, 256)
    count, reasons = _breaks(moe, x)
    assert count == 0, reasons
    torch._dynamo.reset()
    eager = moe(x)
    assert torch.equal(torch.compile(moe, fullgraph=True, backend="aot_eager")(x), eager)
    torch._dynamo.reset()
    if not _cxx_compiler_works():  # a wheels-only machine: inductor's CPU code generation needs one
        pytest.skip("inductor on CPU needs a C++ compiler; the aot_eager compile above ran")
    # Inductor fuses the router's softmax / top-k renormalisation, so the routing weights may move by an ulp; the
    # blockfp8 operators themselves are opaque to it.
    got = torch.compile(moe, fullgraph=True)(x)
    assert (got - eager).abs().max().item() <= 1e-5 * eager.abs().max().item()


@torch.no_grad()
def test_export_records_the_blockfp8_operators():
    lin = _linear(bias=False)
    program = torch.export.export(lin, (torch.randn(5, 384),))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert {"blockfp8.quantize_act.default", "blockfp8.gemm_reference.default"} <= targets, targets
    x = torch.randn(5, 384)
    assert torch.equal(program.module()(x), lin(x))


@torch.no_grad()
def test_forward_reads_no_environment_and_loads_no_table(monkeypatch):
    """After process_weights_after_loading, a forward pass never reads the environment or the tuned tables."""
    import os

    from blockfp8.backends import tuned

    lin = _linear()
    x = torch.randn(4, 384)
    lin(x)

    def forbidden(*_a, **_k):
        raise AssertionError("read in a forward pass")

    monkeypatch.setattr(tuned, "load", forbidden)
    monkeypatch.setattr(os, "getenv", forbidden)
    monkeypatch.setattr(os.environ.__class__, "get", forbidden)
    lin(x)


# ------------------------------------------------------------------ GPU: every backend, CUDA graphs


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS_ON_GPU)
@pytest.mark.parametrize("m", [1, 16, 200])
@torch.no_grad()
def test_linear_compiles_on_every_gpu_backend(backend, m):
    lin = _linear(backend, n=2112, k=7168, bias=False, dtype=torch.bfloat16, device="cuda")
    x = torch.randn(m, 7168, device="cuda", dtype=torch.bfloat16)
    count, reasons = _breaks(lin, x)
    assert count == 0, (backend, reasons)
    torch._dynamo.reset()
    for mode in ("default", "max-autotune-no-cudagraphs", "reduce-overhead"):
        compiled = torch.compile(lin, fullgraph=True, mode=mode)
        got = [compiled(x) for _ in range(3)][-1]  # reduce-overhead records its graph on a later call
        assert torch.equal(got, lin(x)), f"backend={backend} mode={mode} M={m}: compiled differs from eager"
        torch._dynamo.reset()


@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [1, 16, 300])
@torch.no_grad()
def test_moe_block_is_captured_whole_in_a_cuda_graph(tokens):
    """Routing, alignment and both grouped GEMMs on the device: one CUDA graph replays the whole MoE block."""
    block = _block("qwen3_moe", 3, 1024, 768, 32, 4, dtype=torch.bfloat16).cuda()
    moe = BlockFP8MoE.from_module(block, BlockFP8Config(moe_backend="triton"))
    x = torch.randn(tokens, 1024, device="cuda", dtype=torch.bfloat16)
    eager = moe(x)
    static_x = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        moe(static_x)  # warm-up on the side stream, as capture requires
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = moe(static_x)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_out, eager), f"T={tokens}: graph replay differs from eager"
    count, reasons = _breaks(moe, x)
    assert count == 0, reasons
    torch._dynamo.reset()
    assert torch.equal(torch.compile(moe, fullgraph=True, backend="aot_eager")(x), eager)
