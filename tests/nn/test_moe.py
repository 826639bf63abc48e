"""BlockFP8MoE / BlockFP8Experts vs transformers' own Qwen3-MoE and Mixtral sparse MoE blocks, and vs an
independent per-token oracle built from BlockFP8Linear layers on the same FP8 weights."""

import pytest
import torch
import transformers
from transformers import MixtralConfig, Qwen3MoeConfig
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

from blockfp8.backends import select
from blockfp8.config import BlockFP8Config
from blockfp8.nn import BlockFP8Experts, BlockFP8Linear, BlockFP8MoE, select_experts
from blockfp8.quant import metrics
from blockfp8.testing import tolerances as tol

transformers.logging.set_verbosity_error()  # "ExpertsInterface used standalone" notice


def _block(kind, seed, hidden=192, inter=160, experts=8, top_k=2, norm=True, dtype=torch.float32):
    torch.manual_seed(seed)
    if kind == "qwen3_moe":
        cfg = Qwen3MoeConfig(hidden_size=hidden, moe_intermediate_size=inter, num_experts=experts,
                             num_experts_per_tok=top_k, norm_topk_prob=norm)
        block = Qwen3MoeSparseMoeBlock(cfg)
    else:
        cfg = MixtralConfig(hidden_size=hidden, intermediate_size=inter, num_local_experts=experts,
                            num_experts_per_tok=top_k)
        block = MixtralSparseMoeBlock(cfg)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return block.to(dtype).eval()


CASES = [  # kind, hidden, intermediate (ragged and block-aligned), experts, top_k, norm_topk_prob
    ("qwen3_moe", 192, 160, 8, 2, True),
    ("qwen3_moe", 256, 256, 6, 3, False),
    ("mixtral", 256, 384, 4, 2, True),
    ("mixtral", 200, 100, 5, 1, True),
]


@pytest.mark.parametrize("kind,hidden,inter,experts,top_k,norm", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@torch.no_grad()
def test_matches_transformers_block(kind, hidden, inter, experts, top_k, norm, dtype, device):
    block = _block(kind, 0, hidden, inter, experts, top_k, norm, dtype).to(device)
    x = torch.randn(3, 11, hidden).to(device=device, dtype=dtype)
    want = block(x)
    moe = BlockFP8MoE.from_module(block)
    assert moe.top_k == top_k and moe.renormalize == norm
    got = moe(x)
    assert got.shape == want.shape and got.dtype == dtype
    diff = metrics.calc_diff(got, want)
    assert diff < tol.FP8_MLP_CALC_DIFF, f"{kind} H={hidden} I={inter} E={experts} k={top_k} {dtype}: {diff}"


@pytest.mark.parametrize("kind,hidden,inter,experts,top_k,norm", CASES)
@torch.no_grad()
def test_routing_is_transformers_routing(kind, hidden, inter, experts, top_k, norm):
    block = _block(kind, 1, hidden, inter, experts, top_k, norm)
    x = torch.randn(40, hidden)
    _, t_weights, t_ids = block.gate(x)
    moe = BlockFP8MoE.from_module(block, process=False)
    _, weights, ids = moe.route(x)
    assert torch.equal(ids, t_ids)
    assert torch.allclose(weights, t_weights.float(), rtol=0, atol=1e-6)
    w2, i2 = select_experts(x @ block.gate.weight.t(), top_k, norm)
    assert torch.equal(i2, t_ids) and torch.equal(w2, weights)


def _oracle(experts: BlockFP8Experts, x, ids, weights):
    """Token by token, expert by expert, through BlockFP8Linear layers cut from the same FP8 tensors."""
    i = experts.intermediate_size
    cfg = BlockFP8Config(weight_block_size=experts.block_size)
    layers = {}
    for e in range(experts.num_experts):
        for part in ("gate", "up", "down"):
            w, s = experts._slices(part)
            layers[e, part] = BlockFP8Linear.from_fp8(w[e].clone(), s[e].clone(), config=cfg,
                                                     params_dtype=torch.float32)
    out = torch.zeros(x.shape, dtype=torch.float64)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            xt = x[t:t + 1]
            h = experts.act_fn(layers[e, "gate"](xt)) * layers[e, "up"](xt)
            out[t] += float(weights[t, j]) * layers[e, "down"](h)[0].double()
    assert i == layers[0, "gate"].out_features
    return out


@pytest.mark.parametrize("inter", [160, 256])  # ragged halves (separate gate/up GEMMs) and the fused w13 path
@torch.no_grad()
def test_grouped_execution_matches_per_token_oracle(inter):
    block = _block("qwen3_moe", 2, 192, inter, 8, 2)
    moe = BlockFP8MoE.from_module(block)
    x = torch.randn(29, 192)
    _, weights, ids = moe.route(x)
    got = moe.experts(x, ids, weights).double()
    want = _oracle(moe.experts, x, ids, weights)
    err = (got - want).abs().max().item()
    assert err <= tol.gemm_atol(want, torch.float32), f"I={inter} diff={err}"


@torch.no_grad()
def test_experts_module_replaces_transformers_experts_in_place():
    """quantize_model keeps the model's router and swaps the fused experts module: same call signature."""
    block = _block("qwen3_moe", 3)
    x = torch.randn(2, 5, 192)
    want = block(x)
    block.experts = BlockFP8Experts.from_fused(block.experts.gate_up_proj, block.experts.down_proj,
                                               act_fn=block.experts.act_fn)
    assert metrics.calc_diff(block(x), want) < tol.FP8_MLP_CALC_DIFF


def test_one_moe_decision_per_gemm_shape(monkeypatch):
    kinds = []
    real = select.resolve
    monkeypatch.setattr(select, "resolve", lambda p, c=None, pl=None, kind="linear": kinds.append((kind, p.n, p.k,
                                                                                                   p.grouped))
                        or real(p, c, pl, kind))
    moe = BlockFP8MoE.from_module(_block("qwen3_moe", 4, 192, 160, 8, 2))
    moe(torch.randn(7, 192))
    assert kinds == [("moe", 160, 192, True), ("moe", 192, 160, True)]  # I=160: gate and up run apart (N=I)
    assert set(moe.experts.decisions) == {"w13", "w2"}


def test_experts_errors():
    ex = BlockFP8Experts(4, 192, 160, name="blk.experts")
    with pytest.raises(RuntimeError, match="blk.experts: call process_weights_after_loading"):
        ex(torch.randn(3, 192), torch.zeros(3, 1, dtype=torch.long), torch.ones(3, 1))
    with pytest.raises(ValueError, match="blk.experts.w13_weight_scale_inv: block scale"):
        ex.process_weights_after_loading()
    q = torch.zeros(160, 192, dtype=torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="blk.experts.experts.1.down.weight"):
        ex.load_expert(1, "down", q, torch.ones(2, 2))
    with pytest.raises(ValueError, match="expert index out of range"):
        ex.load_expert(4, "gate", q, torch.ones(2, 2))
    with pytest.raises(ValueError, match="shape \\(1, 1\\) does not match"):
        ex.load_expert(0, "gate", q, torch.ones(1, 1))
    block = _block("qwen3_moe", 5)
    moe = BlockFP8MoE.from_module(block)
    # The grouped path (the reference backend's too) checks routing on the device, without a host sync.
    assert moe.experts.prepared_moe is not None
    with pytest.raises(RuntimeError, match="expert index out of range"):
        moe.experts(torch.randn(2, 192), torch.tensor([[0], [9]]), torch.ones(2, 1))
    with pytest.raises(ValueError, match="top_k=9"):
        BlockFP8MoE(moe.experts, block.gate.weight, 9)


# ------------------------------------------------------------------ grouped MoE path (fake backend, CPU)
class _FakeGrouped:
    """The reference backend under the triton id, optionally with the grouped MoE capability."""

    def __init__(self, calls, grouped):
        from blockfp8.backends.base import BackendId
        from blockfp8.backends.registry import get_backend

        self.name, self.calls, self.ref = BackendId.TRITON, calls, get_backend("reference")
        self.moe_activations = ("silu",) if grouped else ()  # the reference itself offers a grouped MoE
        if grouped:
            self.prepare_moe, self.moe = self._prepare_moe, self._moe

    def __getattr__(self, attr):  # the GEMM contract: the reference's, with the decision re-targeted
        import dataclasses

        from blockfp8.backends.base import BackendId

        fn = getattr(self.ref, attr)

        def call(*a):
            self.calls.append(attr)
            a = [dataclasses.replace(v, backend=BackendId.REFERENCE) if hasattr(v, "candidates") else v for v in a]
            return fn(*a)
        return call if attr in ("prepare_weight", "quantize_act", "gemm") else fn

    def _prepare_moe(self, w13, w13_scale, w2, w2_scale, decision, intermediate, block_size, activation):
        from blockfp8.backends.base import PreparedMoE

        self.calls.append("prepare_moe")
        assert decision.backend is self.name and decision.grouped_moe and activation == "silu"
        return PreparedMoE(self.name, w13, w13_scale, w2, w2_scale, intermediate, block_size, activation)

    def _moe(self, x, prepared, topk_weights, topk_ids, decision):
        self.calls.append("moe")
        return torch.full(x.shape, 7.0)


@pytest.mark.parametrize("grouped,act", [(True, "silu"), (False, "silu"), (True, "gelu")])
@torch.no_grad()
def test_grouped_path_exactly_when_the_decision_offers_it(monkeypatch, grouped, act):
    import dataclasses

    from blockfp8.platform import detect

    calls = []
    fake = _FakeGrouped(calls, grouped)
    real = select.get_backend
    monkeypatch.setattr(select, "get_backend", lambda b: fake if str(b) == "triton" else real(b))
    block = _block("qwen3_moe", 6, 192, 160, 4, 2)
    act_fn = torch.nn.SiLU() if act == "silu" else torch.nn.GELU()
    plat = dataclasses.replace(detect("sm_90"), gpu_name="GPU", simulated=False)
    ex = BlockFP8Experts.from_fused(block.experts.gate_up_proj, block.experts.down_proj, act_fn=act_fn,
                                    config=BlockFP8Config(moe_backend="triton"), platform=plat)
    assert ex.decisions["w13"].grouped_moe is grouped and ex.decisions["w2"].grouped_moe is grouped
    x, ids, w = torch.randn(5, 192), torch.randint(0, 4, (5, 2)), torch.rand(5, 2)
    out = ex(x, ids, w)
    if grouped and act == "silu":
        assert calls == ["prepare_moe", "moe"] and ex.prepared == [] and bool((out == 7).all())
    else:
        assert "prepare_moe" not in calls and "moe" not in calls and ex.prepared_moe is None
        assert "gemm" in calls and not bool((out == 7).all())


def test_real_backends_declare_the_grouped_capability():
    from blockfp8.backends.base import offers_grouped_moe
    from blockfp8.backends.registry import get_backend

    assert all(offers_grouped_moe(get_backend(b)) for b in ("deepgemm", "triton", "reference"))
    assert not offers_grouped_moe(get_backend("scaled_mm"))


def test_reference_stays_the_last_resort_for_moe():
    """The reference backend runs a MoE as one operator too, but it never outranks a GPU backend."""
    assert select.preference_order("moe")[-1] == "reference"
    assert select.preference_order("moe")[:2] == ("deepgemm", "triton")


def test_a_grouped_backend_always_outranks_a_per_expert_loop():
    from blockfp8.backends.base import offers_grouped_moe
    from blockfp8.backends.registry import get_backend

    grouped = [offers_grouped_moe(get_backend(b)) for b in select.preference_order("moe")[:-1]]
    assert grouped == sorted(grouped, reverse=True), f"order {select.preference_order('moe')}"
