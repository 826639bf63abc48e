"""BlockFP8Linear: ``out = x @ W.T (+ bias)`` with an FP8 weight in 2-D blocks and activations quantized on the
fly in 1 x bk groups.

Lifecycle (the steps of vLLM's FP8 linear method):

1. ``create_weights`` (run by ``__init__``): ``weight`` FP8 ``[N, K]``, ``weight_scale_inv`` float32
   ``[ceil(N/bn), ceil(K/bk)]`` (the dequant multiplier, named as on disk), optional ``bias``.
2. Load: copy checkpoint tensors into those parameters (``load_fp8_checkpoint``), or build from a float
   ``nn.Linear`` with :meth:`BlockFP8Linear.from_linear`.
3. ``process_weights_after_loading``: asks the policy (``backends.select.resolve``) for this layer's
   :class:`Decision` once, logs its warnings once, and lets the chosen backend prepare the weight (UE8M0
   requant only when the decision says the kernel needs it). The checkpoint tensors stay as they are.
4. ``forward``: the backend quantizes the activation in the scale format and layout the decision names, then
   runs its GEMM. Every consumer reads the same decision; nothing re-probes the platform.

Per-M dispatch: when the policy chose automatically and the decision carries a dispatch plan
(``Decision.dispatch``: M bucket -> one of ``Decision.candidates``, from the shipped tuned table), step 3 also
prepares the weight once for every backend of the plan (``select.for_candidate`` gives each its layouts; the FP8
weight is shared, UE8M0 requants too) and ``forward`` picks by the input's row count: ``decision.backend_for_m``
then a dict lookup, no host sync. An explicit choice (config / env naming a backend) has one candidate and no
plan, so it is never dispatched away from.

Inputs may have any leading shape ``[..., K]`` and be bf16, fp16 or fp32. The GEMM writes ``out_dtype``
(the layer's parameter dtype, fixed when the decision is made); the result is returned in the input's dtype.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from blockfp8.backends import select
from blockfp8.backends.base import Decision, GemmProblem, PreparedWeight, ScaleFmt
from blockfp8.config import BlockFP8Config
from blockfp8.platform import Platform, detect
from blockfp8.quant import reference as ref

INPUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


def runtime_platform(device: torch.device, platform: Platform | None) -> Platform:
    """The platform a layer living on ``device`` runs on: the detected one, except that a layer kept on the CPU
    of a GPU machine runs CPU code (a decision for the GPU could not run there). An explicit ``platform`` is
    used as given."""
    if platform is not None:
        return platform
    detected = detect()
    if device.type == "cpu" and detected.capability is not None and not detected.simulated:
        return dataclasses.replace(detected, device="cpu", gpu_name=None, capability=None)
    return detected


def checkpoint_scale_fmt(scale: torch.Tensor) -> ScaleFmt:
    """UE8M0 when every block scale is a power of two (a ``scale_fmt: ue8m0`` checkpoint), else float32 (also
    for scales not loaded yet)."""
    if scale.is_meta:
        return ScaleFmt.FLOAT32
    return ScaleFmt.UE8M0 if bool(ref.is_power_of_two(scale).all()) else ScaleFmt.FLOAT32


def check_loaded_scales(scale: torch.Tensor, name: str) -> None:
    bad = ~(torch.isfinite(scale) & (scale > 0))
    if bool(bad.any()):
        idx = bad.nonzero()[0].tolist()
        raise ValueError(
            f"{name}: block scale at {idx} is {float(scale[tuple(idx)])} (scales must be finite and positive; "
            "was the checkpoint loaded into this layer?)"
        )


def _share_requant(prepared: PreparedWeight, first: PreparedWeight) -> None:
    """Candidates share the scale format, so a UE8M0 requant gives every backend the same FP8 weight: keep one
    copy (the requant is deterministic; checked once at load)."""
    w, w0 = prepared.weight, first.weight
    if (w is not prepared.checkpoint_weight and w0 is not first.checkpoint_weight and w.shape == w0.shape
            and w.dtype == w0.dtype and torch.equal(w.view(torch.uint8), w0.view(torch.uint8))):
        prepared.weight = w0


class BlockFP8Linear(nn.Module):
    """A linear layer with a block-FP8 weight. See the module docstring for the lifecycle."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        *,
        block_size: Sequence[int] = (128, 128),
        config: BlockFP8Config | None = None,
        params_dtype: torch.dtype = torch.bfloat16,
        fp8_dtype: torch.dtype = torch.float8_e4m3fn,
        device: torch.device | str | None = None,
        name: str = "",
    ):
        super().__init__()
        for what, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name or 'BlockFP8Linear'}: {what}={v!r} must be a positive integer")
        if params_dtype not in INPUT_DTYPES:
            raise ValueError(f"{name or 'BlockFP8Linear'}: params_dtype {params_dtype} must be bf16, fp16 or fp32")
        self.in_features, self.out_features = in_features, out_features
        self.block_size = ref.normalize_block_size(block_size)
        self.config = config if config is not None else BlockFP8Config(weight_block_size=self.block_size)
        self.params_dtype = params_dtype
        self.fp8_dtype = fp8_dtype
        self.name = name
        self.decision: Decision | None = None
        self.prepared: PreparedWeight | None = None
        self._backend = None
        # backend id -> (backend, its decision, its prepared weight): the chosen one plus the dispatch plan's
        self._runners: dict = {}
        self.create_weights(bias, device)

    # ------------------------------------------------------------------ 1. create
    def create_weights(self, bias: bool, device: torch.device | str | None = None) -> None:
        n, k = self.out_features, self.in_features
        self.weight = nn.Parameter(torch.empty(n, k, dtype=self.fp8_dtype, device=device), requires_grad=False)
        s = torch.full(ref.weight_scale_shape((n, k), self.block_size), float("nan"), dtype=torch.float32,
                       device=device)  # NaN until loaded: process_weights_after_loading refuses it
        self.weight_scale_inv = nn.Parameter(s, requires_grad=False)
        if bias:
            self.bias = nn.Parameter(torch.zeros(n, dtype=self.params_dtype, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        config: BlockFP8Config | None = None,
        *,
        scale_fmt: str = "float32",
        name: str = "",
        process: bool = True,
        platform: Platform | None = None,
    ) -> BlockFP8Linear:
        """Quantize a float ``nn.Linear`` (weights in ``scale_fmt`` block scales) into a new layer."""
        w = linear.weight.detach()
        dtype = w.dtype if w.dtype in INPUT_DTYPES else torch.float32
        config = config if config is not None else BlockFP8Config()
        q, s = ref.quantize_weight(w, config.weight_block_size, scale_fmt, name=f"{name or 'linear'}.weight")
        layer = cls.from_fp8(q, s, None if linear.bias is None else linear.bias.detach(), config=config,
                             params_dtype=dtype, name=name, process=process, platform=platform)
        return layer

    @classmethod
    def from_fp8(
        cls,
        weight: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        config: BlockFP8Config | None = None,
        params_dtype: torch.dtype = torch.bfloat16,
        name: str = "",
        process: bool = True,
        platform: Platform | None = None,
    ) -> BlockFP8Linear:
        """Wrap an already-quantized weight (``[N, K]`` FP8) and its block scales (any on-disk dtype)."""
        config = config if config is not None else BlockFP8Config()
        if weight.dim() != 2:
            raise ValueError(f"{name or 'weight'}: expected a 2-D [N, K] FP8 weight, got shape {tuple(weight.shape)}")
        n, k = weight.shape
        layer = cls(k, n, bias is not None, block_size=config.weight_block_size, config=config,
                    params_dtype=params_dtype, fp8_dtype=weight.dtype, device="meta", name=name)
        layer.load_weights(weight, scale, bias)
        if process:
            layer.process_weights_after_loading(platform)
        return layer

    # ------------------------------------------------------------------ 2. load
    def load_weights(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Take checkpoint tensors (checked against this layer's shapes; scales converted to float32)."""
        label = self.name or "BlockFP8Linear"
        if weight.dtype != self.fp8_dtype:
            raise ValueError(f"{label}.weight: dtype {weight.dtype}, expected {self.fp8_dtype}")
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ValueError(f"{label}.weight: shape {tuple(weight.shape)}, expected "
                             f"{(self.out_features, self.in_features)}")
        s = ref.scales_to_float32(scale, f"{label}.weight_scale_inv")
        want = ref.weight_scale_shape((self.out_features, self.in_features), self.block_size)
        if tuple(s.shape) != want:
            raise ValueError(f"{label}.weight_scale_inv: shape {tuple(s.shape)} does not match weight "
                             f"[{self.out_features}, {self.in_features}] with block size {list(self.block_size)}: "
                             f"expected {want}")
        self.weight = nn.Parameter(weight.detach(), requires_grad=False)
        self.weight_scale_inv = nn.Parameter(s.to(weight.device), requires_grad=False)
        if bias is not None:
            if tuple(bias.shape) != (self.out_features,):
                raise ValueError(f"{label}.bias: shape {tuple(bias.shape)}, expected ({self.out_features},)")
            self.bias = nn.Parameter(bias.detach().to(device=weight.device, dtype=self.params_dtype),
                                     requires_grad=False)
        elif self.bias is not None and self.bias.is_meta:
            raise ValueError(f"{label}.bias: the layer has a bias but none was given")
        self.decision = self.prepared = self._backend = None
        self._runners = {}

    # ------------------------------------------------------------------ 3. decide + prepare
    def problem(self) -> GemmProblem:
        return GemmProblem(
            n=self.out_features,
            k=self.in_features,
            block_size=self.block_size,
            out_dtype=_DTYPE_NAMES[self.params_dtype],
            checkpoint_scale_fmt=checkpoint_scale_fmt(self.weight_scale_inv),
            fp8_dtype=str(self.fp8_dtype).removeprefix("torch."),
        )

    def process_weights_after_loading(self, platform: Platform | None = None) -> Decision:
        """Resolve this layer's decision once and prepare the weight for the chosen backend."""
        label = self.name or "BlockFP8Linear"
        if self.weight.is_meta:
            raise ValueError(f"{label}: weights were never loaded")
        check_loaded_scales(self.weight_scale_inv, f"{label}.weight_scale_inv")
        platform = runtime_platform(self.weight.device, platform)
        decision = select.resolve(self.problem(), self.config, platform, kind="linear", layer=self.name or None)
        select.log_decision(decision)
        backend = select.get_backend(decision.backend)
        self.prepared = backend.prepare_weight(self.weight.data, self.weight_scale_inv.data, decision,
                                               self.block_size)
        runners = {decision.backend: (backend, decision, self.prepared)}
        for _, backend_id in decision.dispatch:
            if backend_id not in runners:
                cand = select.for_candidate(decision, backend_id, platform)
                other = select.get_backend(backend_id)
                prepared = other.prepare_weight(self.weight.data, self.weight_scale_inv.data, cand, self.block_size)
                _share_requant(prepared, self.prepared)
                runners[backend_id] = (other, cand, prepared)
        self.decision, self._backend, self._runners = decision, backend, runners
        return decision

    # ------------------------------------------------------------------ 4. forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.decision is None:
            raise RuntimeError(f"{self.name or 'BlockFP8Linear'}: call process_weights_after_loading() before "
                               "forward()")
        if x.dtype not in INPUT_DTYPES:
            raise TypeError(f"{self.name or 'BlockFP8Linear'}: input dtype {x.dtype}; expected bf16, fp16 or fp32")
        if x.shape[-1] != self.in_features:
            raise ValueError(f"{self.name or 'BlockFP8Linear'}: input has K={x.shape[-1]}, the layer takes "
                             f"K={self.in_features}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        backend, decision, prepared = self._runners[self.decision.backend_for_m(x2.shape[0])]
        x_q, x_s = backend.quantize_act(x2, decision, self.block_size[1])
        out = backend.gemm(x_q, x_s, prepared, self.params_dtype, self.bias)
        return out.reshape(*lead, self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        backend = "undecided" if self.decision is None else f"{self.decision.backend}/{self.decision.act_scale_fmt}"
        if self.decision is not None and self.decision.dispatch:
            backend += ", dispatch=" + ",".join(f"<={m}:{b}" for m, b in self.decision.dispatch)
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"block_size={list(self.block_size)}, backend={backend}")
