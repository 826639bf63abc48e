"""Block-FP8 mixture of experts: :class:`BlockFP8Experts` (the expert weights and their grouped execution) and
:class:`BlockFP8MoE` (router + top-k routing as in Qwen3-MoE / Mixtral + experts).

Expert weights, vLLM's layout:

* ``w13_weight`` FP8 ``[E, 2I, H]``: gate rows ``[0, I)`` then up rows ``[I, 2I)`` (transformers' fused
  ``gate_up_proj`` order); ``w13_weight_scale_inv`` float32 ``[E, 2 * ceil(I/bn), ceil(H/bk)]``: the gate
  half and the up half are blocked *separately* (as the two per-expert checkpoint tensors are), so an
  intermediate size that is not a multiple of bn works; when it is, this is exactly the fused blocking.
* ``w2_weight`` FP8 ``[E, H, I]`` (down), ``w2_weight_scale_inv`` float32 ``[E, ceil(H/bn), ceil(I/bk)]``.

Execution: the MoE decisions (``kind="moe"``, resolved once per GEMM shape in ``process_weights_after_loading``,
the same policy and knobs the dense layers obey) say whether their backend runs all experts in one grouped
launch (``Decision.grouped_moe``: Triton's fused block-FP8 grouped GEMM). When both GEMMs' decisions name that
backend and it fuses the layer's activation, the backend prepares every expert's weights once
(``prepare_moe``: its own scale blocking and layout) and ``forward`` makes one call (``moe``). Otherwise tokens
are grouped by expert (a stable sort of the flattened top-k choices), each expert runs its two GEMMs through the
decision's backend (:meth:`BlockFP8Experts.run_expert`), and the weighted outputs are summed back per token in
float32 (the reference path, e.g. on a CPU).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from blockfp8.backends import select
from blockfp8.backends.base import Decision, GemmProblem, PreparedMoE, PreparedWeight
from blockfp8.config import BlockFP8Config
from blockfp8.nn.linear import (
    _DTYPE_NAMES,
    INPUT_DTYPES,
    check_loaded_scales,
    checkpoint_scale_fmt,
    runtime_platform,
)
from blockfp8.platform import Platform
from blockfp8.quant import reference as ref

PARTS = ("gate", "up", "down")


def activation_name(act_fn: Callable[[torch.Tensor], torch.Tensor]) -> str | None:
    """The name a grouped MoE kernel knows the gated activation by ("silu"), or None for anything else."""
    if act_fn is nn.functional.silu or isinstance(act_fn, nn.SiLU) or type(act_fn).__name__ == "SiLUActivation":
        return "silu"
    return None


def select_experts(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen3-MoE / Mixtral routing: softmax over experts in float32, top-k, optionally renormalized to sum 1.
    Returns ``(weights [T, k] float32, expert ids [T, k] int64)``."""
    probs = torch.softmax(router_logits.float(), dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


class BlockFP8Experts(nn.Module):
    """E gated-MLP experts in block FP8. ``forward(hidden [T, H], top_k_index [T, k], top_k_weights [T, k])``:
    the call signature of transformers' fused experts modules, so it replaces them in place."""

    def __init__(
        self,
        num_experts: int,
        hidden_size: int,
        intermediate_size: int,
        *,
        act_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        block_size: Sequence[int] = (128, 128),
        config: BlockFP8Config | None = None,
        params_dtype: torch.dtype = torch.bfloat16,
        fp8_dtype: torch.dtype = torch.float8_e4m3fn,
        device: torch.device | str | None = None,
        name: str = "",
    ):
        super().__init__()
        for what, v in (("num_experts", num_experts), ("hidden_size", hidden_size),
                        ("intermediate_size", intermediate_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name or 'BlockFP8Experts'}: {what}={v!r} must be a positive integer")
        if params_dtype not in INPUT_DTYPES:
            raise ValueError(f"{name or 'BlockFP8Experts'}: params_dtype {params_dtype} must be bf16, fp16 or fp32")
        self.num_experts, self.hidden_size, self.intermediate_size = num_experts, hidden_size, intermediate_size
        self.block_size = ref.normalize_block_size(block_size)
        self.config = config if config is not None else BlockFP8Config(weight_block_size=self.block_size)
        self.act_fn = act_fn if act_fn is not None else nn.SiLU()
        self.params_dtype, self.fp8_dtype, self.name = params_dtype, fp8_dtype, name
        self.decisions: dict[str, Decision] = {}
        self.prepared: list[dict[str, PreparedWeight]] = []
        self.prepared_moe: PreparedMoE | None = None  # set when the decisions' backend runs the grouped kernel
        self._backends: dict[str, object] = {}
        # grouped execution: backend id -> (backend, its decision, its prepared weights), the chosen backend plus
        # the per-token dispatch plan's
        self._moe_runners: dict = {}
        self.create_weights(device)

    # ------------------------------------------------------------------ weights
    def _half_blocks(self) -> int:
        return ref.cdiv(self.intermediate_size, self.block_size[0])

    def create_weights(self, device: torch.device | str | None = None) -> None:
        e, h, i = self.num_experts, self.hidden_size, self.intermediate_size
        bn, bk = self.block_size

        def param(shape, dtype):
            fill = torch.empty(shape, dtype=dtype, device=device)
            if dtype == torch.float32 and fill.device.type != "meta":
                fill.fill_(float("nan"))  # NaN until loaded: process_weights_after_loading refuses it
            return nn.Parameter(fill, requires_grad=False)

        self.w13_weight = param((e, 2 * i, h), self.fp8_dtype)
        self.w13_weight_scale_inv = param((e, 2 * self._half_blocks(), ref.cdiv(h, bk)), torch.float32)
        self.w2_weight = param((e, h, i), self.fp8_dtype)
        self.w2_weight_scale_inv = param((e, ref.cdiv(h, bn), ref.cdiv(i, bk)), torch.float32)

    def _slices(self, part: str) -> tuple[torch.Tensor, torch.Tensor]:
        i, hb = self.intermediate_size, self._half_blocks()
        if part == "gate":
            return self.w13_weight.data[:, :i], self.w13_weight_scale_inv.data[:, :hb]
        if part == "up":
            return self.w13_weight.data[:, i:], self.w13_weight_scale_inv.data[:, hb:]
        if part == "down":
            return self.w2_weight.data, self.w2_weight_scale_inv.data
        raise ValueError(f"part={part!r} is not valid; valid values: {', '.join(PARTS)}")

    def load_expert(self, expert: int, part: str, weight: torch.Tensor, scale: torch.Tensor) -> None:
        """Copy one expert's ``gate`` / ``up`` ([I, H]) or ``down`` ([H, I]) FP8 weight and its block scales
        (any on-disk dtype) into place."""
        label = f"{self.name or 'BlockFP8Experts'}.experts.{expert}.{part}"
        if not 0 <= expert < self.num_experts:
            raise ValueError(f"{label}: expert index out of range [0, {self.num_experts})")
        w_all, s_all = self._slices(part)
        if weight.dtype != self.fp8_dtype or tuple(weight.shape) != tuple(w_all.shape[1:]):
            raise ValueError(f"{label}.weight: {weight.dtype} {tuple(weight.shape)}, expected {self.fp8_dtype} "
                             f"{tuple(w_all.shape[1:])}")
        s = ref.scales_to_float32(scale, f"{label}.weight_scale_inv")
        if tuple(s.shape) != tuple(s_all.shape[1:]):
            raise ValueError(f"{label}.weight_scale_inv: shape {tuple(s.shape)} does not match weight "
                             f"{list(weight.shape)} with block size {list(self.block_size)}: expected "
                             f"{tuple(s_all.shape[1:])}")
        w_all[expert].copy_(weight)
        s_all[expert].copy_(s)
        self.decisions, self.prepared, self.prepared_moe, self._moe_runners = {}, [], None, {}

    @classmethod
    def from_fused(
        cls,
        gate_up: torch.Tensor,
        down: torch.Tensor,
        *,
        act_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        config: BlockFP8Config | None = None,
        scale_fmt: str = "float32",
        name: str = "",
        process: bool = True,
        platform: Platform | None = None,
    ) -> BlockFP8Experts:
        """Quantize float expert weights in transformers' fused layout: ``gate_up [E, 2I, H]`` (gate rows
        first) and ``down [E, H, I]``. Gate, up and down of each expert are quantized separately."""
        if gate_up.dim() != 3 or down.dim() != 3 or gate_up.shape[1] % 2:
            raise ValueError(f"{name or 'experts'}: expected gate_up [E, 2I, H] and down [E, H, I], got "
                             f"{tuple(gate_up.shape)} and {tuple(down.shape)}")
        e, two_i, h = gate_up.shape
        i = two_i // 2
        if tuple(down.shape) != (e, h, i):
            raise ValueError(f"{name or 'experts'}: down_proj shape {tuple(down.shape)} does not match gate_up "
                             f"{tuple(gate_up.shape)}: expected {(e, h, i)}")
        config = config if config is not None else BlockFP8Config()
        dtype = gate_up.dtype if gate_up.dtype in INPUT_DTYPES else torch.float32
        layer = cls(e, h, i, act_fn=act_fn, block_size=config.weight_block_size, config=config,
                    params_dtype=dtype, device=gate_up.device, name=name)
        for x in range(e):
            for part, w in (("gate", gate_up[x, :i]), ("up", gate_up[x, i:]), ("down", down[x])):
                q, s = ref.quantize_weight(w.detach(), config.weight_block_size, scale_fmt,
                                           name=f"{name or 'experts'}.{x}.{part}_proj")
                layer.load_expert(x, part, q, s)
        if process:
            layer.process_weights_after_loading(platform)
        return layer

    # ------------------------------------------------------------------ decide + prepare
    def _problem(self, n: int, k: int, scale: torch.Tensor) -> GemmProblem:
        return GemmProblem(n=n, k=k, block_size=self.block_size, out_dtype=_DTYPE_NAMES[self.params_dtype],
                           checkpoint_scale_fmt=checkpoint_scale_fmt(scale),
                           fp8_dtype=str(self.fp8_dtype).removeprefix("torch."),
                           grouped=True, num_experts=self.num_experts)

    def process_weights_after_loading(self, platform: Platform | None = None) -> dict[str, Decision]:
        """Resolve the MoE decision once per GEMM shape (w13: N=2I (N=I when I % bn != 0), K=H; w2: N=H, K=I) and
        prepare every expert's weights for the chosen backend: all at once for its grouped kernel when the
        decisions say it has one, else expert by expert."""
        label = self.name or "BlockFP8Experts"
        if self.w13_weight.is_meta:
            raise ValueError(f"{label}: weights were never loaded")
        check_loaded_scales(self.w13_weight_scale_inv, f"{label}.w13_weight_scale_inv")
        check_loaded_scales(self.w2_weight_scale_inv, f"{label}.w2_weight_scale_inv")
        platform = runtime_platform(self.w13_weight.device, platform)
        i, h = self.intermediate_size, self.hidden_size
        # The w13 problem is the GEMM the per-expert path runs: [gate; up] at once (N = 2I) when I is a whole
        # number of weight blocks, else gate and up apart (N = I), so a backend's N alignment rule sees that N.
        n13 = 2 * i if i % self.block_size[0] == 0 else i
        decisions = {
            "w13": select.resolve(self._problem(n13, h, self.w13_weight_scale_inv), self.config, platform, "moe"),
            "w2": select.resolve(self._problem(h, i, self.w2_weight_scale_inv), self.config, platform, "moe"),
        }
        for d in decisions.values():
            select.log_decision(d)
        backends = {k: select.get_backend(d.backend) for k, d in decisions.items()}
        self.prepared, self.prepared_moe, self._moe_runners = [], None, {}
        if self._grouped(decisions, backends["w13"]):
            self.prepared_moe = self._prepare_grouped(backends["w13"], decisions["w13"])
            self._moe_runners = {decisions["w13"].backend: (backends["w13"], decisions["w13"], self.prepared_moe)}
            # per-token dispatch (automatic choice, from the shipped MoE table): every grouped backend of the plan
            for _, backend_id in decisions["w13"].dispatch:
                if backend_id not in self._moe_runners:
                    cand = select.for_candidate(decisions["w13"], backend_id, platform)
                    other = select.get_backend(backend_id)
                    self._moe_runners[backend_id] = (other, cand, self._prepare_grouped(other, cand))
        else:
            self.prepared = self._prepare_per_expert(decisions, backends)
        self.decisions, self._backends = decisions, backends
        return decisions

    def _prepare_grouped(self, backend, decision: Decision) -> PreparedMoE:
        return backend.prepare_moe(self.w13_weight.data, self.w13_weight_scale_inv.data, self.w2_weight.data,
                                   self.w2_weight_scale_inv.data, decision, self.intermediate_size, self.block_size,
                                   activation_name(self.act_fn))

    def _grouped(self, decisions: dict[str, Decision], backend: object) -> bool:
        """One grouped launch when both GEMMs' decisions name a backend that offers it (``Decision.grouped_moe``),
        with the same scale formats, and its kernel fuses this layer's activation."""
        d13, d2 = decisions["w13"], decisions["w2"]
        return (d13.grouped_moe and d2.backend is d13.backend and d2.act_scale_fmt is d13.act_scale_fmt
                and d2.requant_weight_ue8m0 == d13.requant_weight_ue8m0
                and activation_name(self.act_fn) in getattr(backend, "moe_activations", ()))

    def _prepare_per_expert(self, decisions: dict[str, Decision], backends: dict) -> list[dict[str, PreparedWeight]]:
        fused = self.intermediate_size % self.block_size[0] == 0  # the separately blocked halves are the fused ones
        prepared = []
        for x in range(self.num_experts):
            per: dict[str, PreparedWeight] = {}
            if fused:
                per["w13"] = backends["w13"].prepare_weight(self.w13_weight.data[x], self.w13_weight_scale_inv.data[x],
                                                            decisions["w13"], self.block_size)
            else:
                for part in ("gate", "up"):
                    w, s = self._slices(part)
                    per[part] = backends["w13"].prepare_weight(w[x], s[x], decisions["w13"], self.block_size)
            w, s = self._slices("down")
            per["down"] = backends["w2"].prepare_weight(w[x], s[x], decisions["w2"], self.block_size)
            prepared.append(per)
        return prepared

    @property
    def decision(self) -> Decision | None:
        """The gate/up GEMM's decision (what a summary shows); ``decisions`` has both."""
        return self.decisions.get("w13")

    # ------------------------------------------------------------------ forward
    def _gemm(self, which: str, x: torch.Tensor, prepared: PreparedWeight) -> torch.Tensor:
        backend, decision = self._backends[which], self.decisions[which]
        x_q, x_s = backend.quantize_act(x, decision, self.block_size[1])
        return backend.gemm(x_q, x_s, prepared, self.params_dtype)

    def run_expert(self, expert: int, x: torch.Tensor) -> torch.Tensor:
        """One expert's gated MLP on its tokens ``x [m, H]`` -> ``[m, H]`` in params_dtype."""
        per = self.prepared[expert]
        if "w13" in per:
            gate, up = self._gemm("w13", x, per["w13"]).split(self.intermediate_size, dim=-1)
        else:
            gate, up = self._gemm("w13", x, per["gate"]), self._gemm("w13", x, per["up"])
        return self._gemm("w2", self.act_fn(gate) * up, per["down"])

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        label = self.name or "BlockFP8Experts"
        if not self.prepared and self.prepared_moe is None:
            raise RuntimeError(f"{label}: call process_weights_after_loading() before forward()")
        if hidden_states.dim() != 2 or hidden_states.shape[1] != self.hidden_size:
            raise ValueError(f"{label}: hidden_states must be [T, {self.hidden_size}], got "
                             f"{tuple(hidden_states.shape)}")
        if top_k_index.shape != top_k_weights.shape or top_k_index.shape[0] != hidden_states.shape[0]:
            raise ValueError(f"{label}: top_k_index {tuple(top_k_index.shape)} and top_k_weights "
                             f"{tuple(top_k_weights.shape)} must both be [T, k] with T={hidden_states.shape[0]}")
        x = hidden_states.to(self.params_dtype)
        if self.prepared_moe is not None:
            # No host sync: the range check runs on the device (an index out of range would read past the
            # expert weights in the kernel).
            torch._assert_async(((top_k_index >= 0) & (top_k_index < self.num_experts)).all(),
                                f"{label}: expert index out of range [0, {self.num_experts})")
            # the token count is static in a graph or a compiled shape: the dispatch is settled at trace time
            backend, decision, prepared = self._moe_runners[self.decisions["w13"].backend_for_m(x.shape[0])]
            out = backend.moe(x, prepared, top_k_weights, top_k_index, decision)
            return out.to(hidden_states.dtype)
        k = top_k_index.shape[1]
        flat = top_k_index.reshape(-1).to(torch.int64)
        weights = top_k_weights.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=self.num_experts).tolist()
        if len(counts) > self.num_experts:
            raise ValueError(f"{label}: expert index {len(counts) - 1} out of range [0, {self.num_experts})")
        out = torch.zeros(hidden_states.shape, dtype=torch.float32, device=hidden_states.device)
        start = 0
        for expert, count in enumerate(counts):
            if count == 0:
                continue
            slot = order[start:start + count]
            start += count
            tokens = slot // k
            y = self.run_expert(expert, x[tokens])
            out.index_add_(0, tokens, y.float() * weights[slot, None].float())
        return out.to(hidden_states.dtype)

    def extra_repr(self) -> str:
        d = self.decision
        return (f"num_experts={self.num_experts}, hidden_size={self.hidden_size}, "
                f"intermediate_size={self.intermediate_size}, block_size={list(self.block_size)}, "
                f"backend={'undecided' if d is None else f'{d.backend}/{d.act_scale_fmt}'}"
                f"{', grouped' if self.prepared_moe is not None else ''}")


class BlockFP8MoE(nn.Module):
    """A sparse MoE block: an unquantized router (``gate``, [E, H]), top-k softmax routing as in Qwen3-MoE
    (``renormalize=norm_topk_prob``) and Mixtral (``renormalize=True``), and :class:`BlockFP8Experts`.
    ``forward(x [..., H]) -> [..., H]``."""

    def __init__(self, experts: BlockFP8Experts, router_weight: torch.Tensor, top_k: int, renormalize: bool = True):
        super().__init__()
        e, h = experts.num_experts, experts.hidden_size
        if tuple(router_weight.shape) != (e, h):
            raise ValueError(f"{experts.name or 'BlockFP8MoE'}: router weight {tuple(router_weight.shape)}, expected "
                             f"{(e, h)}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= e:
            raise ValueError(f"{experts.name or 'BlockFP8MoE'}: top_k={top_k!r} must be in [1, {e}]")
        self.gate = nn.Linear(h, e, bias=False, device="meta")
        self.gate.weight = nn.Parameter(router_weight.detach(), requires_grad=False)
        self.experts = experts
        self.top_k, self.renormalize = top_k, renormalize

    @classmethod
    def from_module(cls, block: nn.Module, config: BlockFP8Config | None = None, *, scale_fmt: str = "float32",
                    name: str = "", process: bool = True, platform: Platform | None = None) -> BlockFP8MoE:
        """Convert a transformers sparse MoE block with a softmax top-k router and fused experts
        (Qwen3-MoE ``Qwen3MoeSparseMoeBlock``, Mixtral ``MixtralSparseMoeBlock``, ...)."""
        gate, experts = getattr(block, "gate", None), getattr(block, "experts", None)
        if gate is None or experts is None or not is_fused_experts(experts) or not hasattr(gate, "weight"):
            raise TypeError(f"{name or type(block).__name__}: not a sparse MoE block with a router `gate` and fused "
                            "`experts` (gate_up_proj [E, 2I, H], down_proj [E, H, I])")
        top_k = getattr(gate, "top_k", None) or getattr(block, "top_k", None)
        renormalize = bool(getattr(gate, "norm_topk_prob", getattr(block, "norm_topk_prob", True)))
        fp8 = BlockFP8Experts.from_fused(experts.gate_up_proj, experts.down_proj,
                                         act_fn=getattr(experts, "act_fn", None),
                                         config=config, scale_fmt=scale_fmt, name=f"{name}.experts" if name else "",
                                         process=process, platform=platform)
        return cls(fp8, gate.weight, int(top_k), renormalize)

    def process_weights_after_loading(self, platform: Platform | None = None) -> dict[str, Decision]:
        return self.experts.process_weights_after_loading(platform)

    def route(self, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(router logits [T, E], weights [T, k] float32, expert ids [T, k])."""
        logits = nn.functional.linear(x2, self.gate.weight.to(x2.dtype))
        weights, ids = select_experts(logits, self.top_k, self.renormalize)
        return logits, weights, ids

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        _, weights, ids = self.route(x2)
        return self.experts(x2, ids, weights).reshape(*lead, x.shape[-1])


def is_fused_experts(module: nn.Module) -> bool:
    """transformers 5.x fused experts: 3-D ``gate_up_proj [E, 2I, H]`` and ``down_proj [E, H, I]`` parameters."""
    gu, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    return (
        isinstance(gu, torch.Tensor) and isinstance(down, torch.Tensor) and gu.dim() == 3 and down.dim() == 3
        and gu.shape[0] == down.shape[0] and gu.shape[1] == 2 * down.shape[2] and gu.shape[2] == down.shape[1]
        and getattr(module, "has_bias", False) is False and getattr(module, "gate_up_proj_bias", None) is None
    )
