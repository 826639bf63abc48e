"""The contract every GEMM backend follows, and the per-layer Decision every consumer reads.

A layer's backend is resolved once (``backends.select``) into a frozen :class:`Decision` that records the
backend, the scale formats and layouts its kernel needs, whether the weight must be requantized to UE8M0,
where the choice came from and every reason considered. Weight post-processing, activation quantization,
the GEMM call, warmup, logging and ``blockfp8 explain`` all read that record; none re-probes a global.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol

from blockfp8.quant.layouts import ScaleFmt, ScaleLayout

if TYPE_CHECKING:  # keep this module importable without torch's heavy parts at type-check time only
    import torch

    from blockfp8.platform import Platform


class BackendId(str, enum.Enum):
    """Backend ids: the same lowercase strings in env vars, CLI flags, CSV columns and logs."""

    AUTO = "auto"
    DEEPGEMM = "deepgemm"
    SCALED_MM = "scaled_mm"
    CUTE = "cute"
    TRITON = "triton"
    REFERENCE = "reference"

    def __str__(self) -> str:  # "deepgemm", not "BackendId.DEEPGEMM"
        return self.value

    @classmethod
    def parse(cls, value: str | BackendId, field_name: str = "backend") -> BackendId:
        if isinstance(value, BackendId):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            valid = ", ".join(b.value for b in cls)
            raise ValueError(f"{field_name}={value!r} is not valid; valid values: {valid}") from None


@dataclass(frozen=True)
class GemmProblem:
    """What a layer asks of a kernel: out[M, N] = x[M, K] @ w[N, K].T, M varies at run time."""

    n: int
    k: int
    block_size: tuple[int, int] = (128, 128)
    out_dtype: str = "bfloat16"  # torch dtype name
    checkpoint_scale_fmt: ScaleFmt = ScaleFmt.FLOAT32  # what the weight's scales are on disk
    fp8_dtype: str = "float8_e4m3fn"
    grouped: bool = False  # MoE: one GEMM per expert
    num_experts: int = 1


@dataclass(frozen=True)
class Decision:
    """The one resolved choice for a layer (dense or MoE). Every consumer reads it."""

    kind: str  # "linear" | "moe"
    backend: BackendId
    weight_scale_fmt: ScaleFmt  # scales the kernel multiplies by (after any requant)
    act_scale_fmt: ScaleFmt  # format activation scales are produced in
    act_scale_layout: ScaleLayout
    weight_scale_layout: ScaleLayout
    requant_weight_ue8m0: bool  # the irreversible second rounding: only when the kernel needs it
    use_deep_gemm: bool  # final answer, after config / env / guard / defaults
    source: str  # where the backend choice came from: "config" | "env" | "guard" | "audit" | "default"
    arch: str | None  # "sm_90", ... or None for CPU
    reasons: tuple[str, ...] = ()  # every backend considered and why it was taken or skipped
    warnings: tuple[str, ...] = ()  # logged once each, by the consumer that acts on the decision
    # Backends, in preference order (the chosen one first), that are supported, can implement the problem, are
    # allowed by the policy and take the same scale *format* as the chosen one: what per-M-bucket dispatch may
    # pick from. Layouts differ per backend: ``select.for_candidate(decision, id)`` gives each one's decision.
    candidates: tuple[BackendId, ...] = ()
    fp8_dtype: str = "float8_e4m3fn"  # torch dtype name of the FP8 operands (from the problem)
    simulated: bool = False  # a plan for a BLOCKFP8_ARCH / --arch GPU, not necessarily this machine
    # Per-M-bucket dispatch (dense layers, automatic choice only): ``((max M of the bucket, backend), ...)``
    # ascending, from the shipped tuned table for this GPU model, every backend one of ``candidates``. Empty when
    # the chosen backend serves every M (explicit choice, one candidate, or no table entry for this N, K, GPU).
    dispatch: tuple[tuple[int, BackendId], ...] = ()
    # MoE: the chosen backend runs all experts in one grouped launch (``prepare_moe`` / ``moe``, see
    # :class:`GroupedMoEBackend`) instead of a per-expert loop of ``gemm``.
    grouped_moe: bool = False
    # MoE: what runs the experts, in words ("fused_moe (Triton ...)", DeepGEMM's grouped kernels, or a per-expert
    # loop of the backend's dense GEMM): what ``explain`` shows.
    moe_kernel: str = ""
    # Whether the fused Triton activation quantizer can feed a GPU kernel here (a CUDA device with Triton, power-of-
    # two groups, float8_e4m3fn); else quant.reference plus the layout step runs. Same bits either way; decided once
    # for the layer, never probed per call. The Triton backend always uses its fused quantizer.
    fused_act_quant: bool = False
    # The tuned-table keys of the platform the decision was made for (GPU name, then SM family; none for a CPU or a
    # planned platform): per-M dispatch and the Triton launch configs read the tables under the same keys.
    tuned_keys: tuple[str, ...] = ()

    def backend_for_m(self, m: int) -> BackendId:
        """The backend that runs ``M = m`` rows (the dispatch plan's bucket, else the chosen backend)."""
        for bucket, backend in self.dispatch:
            if m <= bucket:
                return backend
        return self.dispatch[-1][1] if self.dispatch else self.backend

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "backend": str(self.backend),
            "scale_fmt": str(self.weight_scale_fmt),
            "act_scale_fmt": str(self.act_scale_fmt),
            "act_scale_layout": str(self.act_scale_layout),
            "weight_scale_layout": str(self.weight_scale_layout),
            "requant_weight_ue8m0": self.requant_weight_ue8m0,
            "use_deep_gemm": self.use_deep_gemm,
            "source": self.source,
            "arch": self.arch,
            "reasons": list(self.reasons),
            "warnings": list(self.warnings),
            "candidates": [str(c) for c in self.candidates],
            "fp8_dtype": self.fp8_dtype,
            "simulated": self.simulated,
            "dispatch": {str(m): str(b) for m, b in self.dispatch},
            "grouped_moe": self.grouped_moe,
            "moe_kernel": self.moe_kernel,
            "fused_act_quant": self.fused_act_quant,
            "tuned_keys": list(self.tuned_keys),
        }


@dataclass
class PreparedWeight:
    """A weight made ready for one backend. ``checkpoint_scale`` keeps the original float32 scales so that a
    different backend can still be chosen later (the UE8M0 requant is never done in place)."""

    backend: BackendId
    weight: torch.Tensor  # FP8 [N, K] (possibly requantized)
    scale: torch.Tensor  # in the backend's layout / format
    checkpoint_weight: torch.Tensor
    checkpoint_scale: torch.Tensor  # float32 [ceil(N/bn), ceil(K/bk)]
    block_size: tuple[int, int]
    extra: dict = field(default_factory=dict)


@dataclass
class PreparedMoE:
    """All experts' weights made ready for one backend's grouped MoE kernel (``GroupedMoEBackend.prepare_moe``).
    ``intermediate`` is the intermediate size the kernel runs with (the layer's, or padded to a whole weight
    block); ``w13`` / ``w2`` and their scales are in the kernel's layout and format."""

    backend: BackendId
    w13: torch.Tensor  # FP8 [E, 2 * intermediate, H]: gate rows then up rows
    w13_scale: torch.Tensor
    w2: torch.Tensor  # FP8 [E, H, intermediate]
    w2_scale: torch.Tensor
    intermediate: int
    block_size: tuple[int, int]
    activation: str = "silu"
    extra: dict = field(default_factory=dict)


class GemmBackend(Protocol):
    name: ClassVar[BackendId]

    def is_supported(self, platform: Platform) -> tuple[bool, str]:
        """Hardware, libraries, versions. The reason is shown in `explain` either way."""
        ...

    def can_implement(self, problem: GemmProblem) -> tuple[bool, str]:
        """Dtypes, block sizes, alignment."""
        ...

    def required_scale_fmt(self, platform: Platform) -> ScaleFmt | None:
        """The only scale format this kernel takes on this platform, or None when it takes either."""
        ...

    def scale_layouts(self, platform: Platform) -> tuple[ScaleLayout, ScaleLayout]:
        """(activation scale layout, weight scale layout) this kernel takes on this platform."""
        ...

    def prepare_weight(self, w_q: torch.Tensor, w_scale: torch.Tensor, decision: Decision,
                       block_size: tuple[int, int]) -> PreparedWeight:
        """One-time layout / scale-format work, as the decision says."""
        ...

    def quantize_act(self, x: torch.Tensor, decision: Decision, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Dynamic 1 x G quantization of x[M, K] into the scale format and layout this kernel takes."""
        ...

    def gemm(self, x_q: torch.Tensor, x_scale: torch.Tensor, prepared: PreparedWeight, out_dtype: torch.dtype,
             bias: torch.Tensor | None = None) -> torch.Tensor:
        """out[M, N] = x @ w.T with per-128-K promotion of the scales."""
        ...


class GroupedMoEBackend(GemmBackend, Protocol):
    """Optional capability: a backend that runs every expert of a MoE layer in one grouped launch. The policy
    records it in ``Decision.grouped_moe`` (:func:`offers_grouped_moe`); the MoE layer reads the decision."""

    moe_activations: ClassVar[tuple[str, ...]]  # gated activations its kernel fuses ("silu": silu(gate) * up)
    moe_kernel: ClassVar[str]  # the grouped kernel, in words (``Decision.moe_kernel``)

    def prepare_moe(self, w13: torch.Tensor, w13_scale: torch.Tensor, w2: torch.Tensor, w2_scale: torch.Tensor,
                    decision: Decision, intermediate: int, block_size: tuple[int, int],
                    activation: str = "silu") -> PreparedMoE:
        """One-time work for all experts. Takes the MoE layer's storage: ``w13 [E, 2I, H]`` with
        ``w13_scale [E, 2 * ceil(I/bn), ceil(H/bk)]`` (gate and up halves blocked separately),
        ``w2 [E, H, I]`` with ``w2_scale [E, ceil(H/bn), ceil(I/bk)]``."""
        ...

    def moe(self, x: torch.Tensor, prepared: PreparedMoE, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
            decision: Decision) -> torch.Tensor:
        """``sum_j topk_weights[t, j] * W2[e_j] @ act(W13[e_j] @ x[t])`` for ``x [T, H]``: float32 ``[T, H]``."""
        ...


def offers_grouped_moe(backend: object) -> bool:
    """Whether a backend object implements :class:`GroupedMoEBackend` (read by the policy, recorded in the
    decision; layers read ``Decision.grouped_moe``, never this)."""
    return bool(getattr(backend, "moe_activations", ())) and callable(getattr(backend, "prepare_moe", None)) \
        and callable(getattr(backend, "moe", None))


def moe_kernel_of(backend: object) -> str:
    """``Decision.moe_kernel`` for a MoE layer on ``backend``: its grouped kernel, else a per-expert loop."""
    if offers_grouped_moe(backend):
        return str(getattr(backend, "moe_kernel", "grouped kernel"))
    return f"per-expert loop of {getattr(backend, 'name', backend)}'s dense GEMM"


def check_decision_for(decision: Decision, backend: BackendId) -> None:
    """A backend acts only on a decision made for it: scales laid out for one kernel (packed UE8M0 int32 words,
    say) must never reach another kernel, which would read them as float32."""
    if decision.backend is not backend:
        raise ValueError(
            f"decision is for backend {decision.backend} ({decision.kind}), not {backend}: resolve the layer again "
            f"or use select.for_candidate(decision, {str(backend)!r}) to get this backend's scale format and layout"
        )


def quantize_act_unpadded(backend: BackendId, x: torch.Tensor, decision: Decision, group_size: int,
                          fused: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``backend.quantize_act`` for kernels that take the activation as it is (no row or column padding): 1 x
    ``group_size`` groups in the decision's scale format and layout; ``fused`` picks the Triton quantizer."""
    import torch

    from blockfp8.kernels.ops import ops

    check_decision_for(decision, backend)
    return ops.quantize_act(x.reshape(-1, x.shape[-1]), group_size, decision.act_scale_fmt.value,
                            decision.act_scale_layout.value, 1, 1, getattr(torch, decision.fp8_dtype), fused)


def scales_for_decision(w_q: torch.Tensor, w_scale: torch.Tensor, decision: Decision, block_size: tuple[int, int]
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weight, float32 scales, checkpoint float32 scales) in the format the decision asks for, before any
    backend-specific layout. The UE8M0 requant (a second FP8 rounding) happens only when the decision says so, on
    new tensors, so the checkpoint's weight and scales stay usable by another backend."""
    from blockfp8.quant import reference as ref

    checkpoint_scale = ref.scales_to_float32(w_scale, "weight_scale")
    if decision.requant_weight_ue8m0:
        weight, scale = ref.requant_to_ue8m0(w_q, checkpoint_scale, block_size)
        return weight, scale, checkpoint_scale
    return w_q, checkpoint_scale, checkpoint_scale


def fused_act_quant_runs(platform: Platform, problem: GemmProblem) -> bool:
    """Whether the fused Triton activation quantizer can run for this layer here (``Decision.fused_act_quant``)."""
    from blockfp8.kernels.act_quant import fused_quantizer_fits

    usable = platform.device == "cuda" and platform.has("triton")
    return usable and fused_quantizer_fits(problem.block_size[1], problem.fp8_dtype)


def prepare_grouped_moe(backend: GroupedMoEBackend, w13: torch.Tensor, w13_scale: torch.Tensor, w2: torch.Tensor,
                        w2_scale: torch.Tensor, decision: Decision, intermediate: int, block_size: tuple[int, int],
                        activation: str) -> PreparedMoE:
    """What every grouped backend's ``prepare_moe`` starts with: the decision is for it, its kernel fuses
    ``activation``, and all experts stacked in the decision's scale format (:func:`stack_moe_weights`)."""
    check_decision_for(decision, backend.name)
    if activation not in backend.moe_activations:
        raise ValueError(f"{backend.name} grouped MoE fuses {', '.join(backend.moe_activations)}, not {activation!r}")
    return stack_moe_weights(backend.name, w13, w13_scale, w2, w2_scale, decision, intermediate, block_size,
                             activation)


def stack_moe_weights(backend: BackendId, w13: torch.Tensor, w13_scale: torch.Tensor, w2: torch.Tensor,
                      w2_scale: torch.Tensor, decision: Decision, intermediate: int, block_size: tuple[int, int],
                      activation: str) -> PreparedMoE:
    """All experts' weights in the form a grouped MoE kernel takes, in the decision's scale format.

    The MoE layer blocks gate and up separately (``w13_scale [E, 2 * ceil(I/bn), ...]``); a grouped kernel blocks
    the stacked ``[E, 2I, H]`` rows as one matrix (``[E, ceil(2I/bn), ...]``). They agree when ``I % bn == 0`` and
    the tensors are shared. Otherwise each half is padded with zero rows to ``I' = ceil(I/bn) * bn`` (then the
    layer's scales are exactly the fused blocking) and ``w2`` with zero columns to ``I'`` (zero activations there
    after SiLU-and-mul, and a group's amax is unchanged, so the result is the unpadded one). Done once, at load."""
    import torch

    from blockfp8.quant import reference as ref

    bn, bk = block_size
    e, two_i, h = w13.shape
    if two_i != 2 * intermediate or tuple(w2.shape) != (e, h, intermediate):
        raise ValueError(f"moe weights: w13 {tuple(w13.shape)} / w2 {tuple(w2.shape)} do not fit "
                         f"intermediate size {intermediate}")
    half_blocks = ref.cdiv(intermediate, bn)
    want13 = (e, 2 * half_blocks, ref.cdiv(h, bk))
    if tuple(w13_scale.shape) != want13:
        raise ValueError(f"w13 scale: shape {tuple(w13_scale.shape)}, expected {want13} (halves blocked apart)")
    i_pad = half_blocks * bn
    if i_pad != intermediate:
        pad = i_pad - intermediate
        z13 = w13.new_zeros((e, pad, h))
        w13 = torch.cat((w13[:, :intermediate], z13, w13[:, intermediate:], z13), dim=1)
        w2 = torch.cat((w2, w2.new_zeros((e, h, pad))), dim=2)
        groups = ref.cdiv(i_pad, bk) - w2_scale.shape[2]  # > 0 only when bk < bn: those columns are zero
        if groups:
            w2_scale = torch.nn.functional.pad(ref.scales_to_float32(w2_scale, "w2 scale"), (0, groups),
                                               value=1.0)
    w13_scale = ref.scales_to_float32(w13_scale, "w13 scale")
    w2_scale = ref.scales_to_float32(w2_scale, "w2 scale")
    if decision.requant_weight_ue8m0:  # the kernel needs UE8M0: requant expert by expert, on new tensors
        p13 = [scales_for_decision(w13[x], w13_scale[x], decision, block_size) for x in range(e)]
        p2 = [scales_for_decision(w2[x], w2_scale[x], decision, block_size) for x in range(e)]
        w13, w13_scale = torch.stack([p[0] for p in p13]), torch.stack([p[1] for p in p13])
        w2, w2_scale = torch.stack([p[0] for p in p2]), torch.stack([p[1] for p in p2])
    return PreparedMoE(backend, w13, w13_scale.contiguous(), w2, w2_scale.contiguous(), i_pad, tuple(block_size),
                       activation)
