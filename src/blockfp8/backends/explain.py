"""What the policy would decide, explained: the data behind ``blockfp8 explain`` and the selection lines of
``blockfp8 check``.

:func:`explain` resolves one dense and one MoE problem of a given shape for a config and a platform (a real GPU or
a plan for one) and keeps every decision or the error that stopped it; :meth:`Explanation.as_dict` is the
``--json`` output and :func:`render_text` the text one. :func:`selection_for_verdict` asks the same policy what
a measured UE8M0 verdict changes on a Hopper and a Blackwell plan. Nothing here reads files or parses flags: the
caller builds the config (from a checkpoint, flags, an audit report) and prints the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from blockfp8 import envs
from blockfp8.backends.base import Decision, GemmProblem, ScaleFmt
from blockfp8.backends.guard import guard_verdict
from blockfp8.backends.select import KINDS, BackendUnavailableError, NoBackendError, resolve
from blockfp8.config import AuditVerdict, BlockFP8Config
from blockfp8.platform import Platform, detect

__all__ = [
    "PLAN_ARCHES",
    "ArchSelection",
    "Explanation",
    "LayerChoice",
    "explain",
    "layer_choices",
    "problems",
    "render_layer_choices",
    "render_selection",
    "render_text",
    "selection_for_verdict",
]

# The GPU generations `check` shows a verdict's effect on: DeepGEMM takes float32 scales on Hopper and only UE8M0
# on Blackwell, so these two bracket what an audit verdict can change.
PLAN_ARCHES = (("Hopper", "sm_90"), ("Blackwell", "sm_100"))
_TITLES = {"linear": "dense layers", "moe": "MoE layers"}


# ------------------------------------------------------------------------------------------------ explain


@dataclass(frozen=True)
class Explanation:
    """The decision (or the error) for a dense and an MoE layer of one shape, with what produced it."""

    platform: Platform
    config: BlockFP8Config
    n: int
    k: int
    num_experts: int
    has_moe: bool  # the model has MoE layers: their errors fail the plan and their warnings would be logged
    env: dict[str, object]  # the BLOCKFP8_* variables set when it was resolved, parsed
    decisions: dict[str, Decision] = field(default_factory=dict)  # kind -> decision
    errors: dict[str, str] = field(default_factory=dict)  # kind -> why nothing (or not the named backend) runs

    @property
    def failed(self) -> bool:
        """An explicit choice cannot run for dense layers, or for MoE layers of a model that has them."""
        return "linear" in self.errors or (self.has_moe and "moe" in self.errors)

    def path(self, kind: str) -> dict:
        """One kind's decision as a dict, or ``{"kind": kind, "error": ...}``."""
        if kind in self.errors:
            return {"kind": kind, "error": self.errors[kind]}
        return self.decisions[kind].as_dict()

    def warnings(self) -> list[str]:
        """What acting on these decisions would log, once each however many layers share a message; MoE
        warnings only for a model with MoE layers."""
        kinds = ("linear", "moe") if self.has_moe else ("linear",)
        logged = [w for kind in kinds if kind in self.decisions for w in self.decisions[kind].warnings]
        return list(dict.fromkeys(logged))

    def as_dict(self) -> dict:
        """The ``blockfp8 explain --json`` object (keys documented in docs/policy.md)."""
        paths = {kind: self.path(kind) for kind in KINDS}
        audit = self.config.audit
        return {
            "platform": self.platform.as_dict(),
            "plan_only": self.platform.simulated,
            "model_type": self.config.model_type,
            "audit": None if audit is None else {"ue8m0_ok": audit.ue8m0_ok, "model_type": audit.model_type,
                                                 "evidence": audit.evidence},
            "has_moe": self.has_moe,
            "problem": {"n": self.n, "k": self.k, "block_size": list(self.config.weight_block_size),
                        "num_experts": self.num_experts},
            "env": dict(self.env),
            "linear": paths["linear"],
            "moe": paths["moe"],
            "use_deep_gemm": {kind: d.get("use_deep_gemm") for kind, d in paths.items()},
            "source": {kind: d.get("source") for kind, d in paths.items()},
            "reasons": {kind: d.get("reasons", [d.get("error")]) for kind, d in paths.items()},
            "warnings": self.warnings(),
        }


def problems(config: BlockFP8Config, n: int, k: int, num_experts: int) -> dict[str, GemmProblem]:
    """The dense and the MoE problem of an ``N x K`` layer, with the config's block size and on-disk scale format."""
    checkpoint_fmt = ScaleFmt.UE8M0 if config.scale_fmt == "ue8m0" else ScaleFmt.FLOAT32
    return {
        "linear": GemmProblem(n, k, config.weight_block_size, checkpoint_scale_fmt=checkpoint_fmt),
        "moe": GemmProblem(n, k, config.weight_block_size, checkpoint_scale_fmt=checkpoint_fmt, grouped=True,
                           num_experts=num_experts),
    }


def explain(config: BlockFP8Config, platform: Platform, n: int, k: int, *, moe: bool = False,
            num_experts: int = 8) -> Explanation:
    """Resolve a dense and an MoE layer of ``N x K`` (``num_experts`` experts) for ``config`` on ``platform``.
    ``moe`` says the model has MoE layers. A choice that cannot run is recorded as that kind's error, not raised."""
    decisions: dict[str, Decision] = {}
    errors: dict[str, str] = {}
    for kind, problem in problems(config, n, k, int(num_experts)).items():
        try:
            decisions[kind] = resolve(problem, config, platform, kind=kind)
        except (BackendUnavailableError, NoBackendError) as exc:
            errors[kind] = str(exc)
    env = {name: envs.get(name) for name in envs.ENV_VARS if envs.is_set(name)}
    return Explanation(platform, config, n, k, int(num_experts), bool(moe), env, decisions, errors)


def render_text(explanation: Explanation) -> str:
    """The text form of ``blockfp8 explain``: platform, model, layer, environment, each kind's decision with its
    reasons, then the warnings that would be logged."""
    e = explanation
    lines = [f"platform    {e.platform.describe()}"
             + ("  (a plan for that GPU, not this machine)" if e.platform.simulated else ""),
             f"model_type  {e.config.model_type or '(unknown: the accuracy guard cannot match it)'}"]
    if e.config.audit is not None:
        a = e.config.audit
        lines.append(f"audit       UE8M0 {'acceptable' if a.ue8m0_ok else 'harmful'}: {a.evidence}")
    lines.append(f"layer       N={e.n} K={e.k} block={list(e.config.weight_block_size)}")
    lines += [f"env         {name}={value}" for name, value in e.env.items()]
    for kind in KINDS:
        lines += ["", *_kind_lines(e, kind)]
    lines.append("")
    warnings = e.warnings()
    if warnings:
        lines.append("warnings that would be logged (once each):")
        lines += [f"  {message}" for message in warnings]
    else:
        lines.append("no warnings would be logged")
    return "\n".join(lines)


def _kind_lines(e: Explanation, kind: str) -> list[str]:
    title = _TITLES[kind]
    note = "" if kind == "linear" or e.has_moe else "  (no MoE layers declared: shown for reference)"
    if kind in e.errors:
        return [f"{title}: ERROR{note}", f"  {e.errors[kind]}"]
    d = e.decisions[kind]
    head = (f"{title}: {d.backend!s}, {d.act_scale_fmt!s} activation scales, {d.weight_scale_fmt!s} weight scales"
            f"{' (UE8M0 requant)' if d.requant_weight_ue8m0 else ''}, source: {d.source}{note}")
    experts = [f"  experts run by: {d.moe_kernel}"] if kind == "moe" else []
    return [head, *experts, *(f"  {reason}" for reason in d.reasons)]


# ------------------------------------------------------------------------------------------------ audit verdicts


@dataclass(frozen=True)
class ArchSelection:
    """What the policy picks on one planned GPU for a layer, fed an audit verdict, and what its guard says."""

    label: str  # "Hopper"
    arch: str  # "sm_90"
    pick: str  # "triton with float32 weight / float32 activation scales", or why nothing runs
    guard: str

    def line(self) -> str:
        return f"  {self.label:9s} {self.arch:7s}: {self.pick}; guard: {self.guard}"


def selection_for_verdict(n: int, k: int, block_size: tuple[int, int], audit: AuditVerdict,
                          arches: tuple[tuple[str, str], ...] = PLAN_ARCHES, layer: str | None = None
                          ) -> list[ArchSelection]:
    """For an ``N x K`` dense layer (module ``layer``, for a verdict with a per-layer plan) of the audited model
    (``audit.model_type``), the policy's pick and its accuracy guard's answer on each ``(label, arch)`` plan, with
    ``audit`` as the measured verdict."""
    config = BlockFP8Config(model_type=audit.model_type, audit=audit, weight_block_size=tuple(block_size))
    out = []
    for label, arch in arches:
        plat = detect(arch=arch)
        try:
            d = resolve(GemmProblem(n, k, tuple(block_size)), config, plat, layer=layer)
            pick = f"{d.backend} with {d.weight_scale_fmt} weight / {d.act_scale_fmt} activation scales"
        except (BackendUnavailableError, NoBackendError) as exc:
            pick = f"nothing runs here ({str(exc).splitlines()[0]})"
        g = guard_verdict(config.model_type, plat, audit, layer)
        if g.source == "audit":
            guard = ("DeepGEMM kept off where installed (its kernel takes only UE8M0 here)" if g.blocks_deep_gemm
                     else "DeepGEMM allowed with UE8M0 scales")
        else:
            guard = g.reason
        out.append(ArchSelection(label, arch, pick, guard))
    return out


def render_selection(layer: str, n: int, k: int, selections: list[ArchSelection]) -> list[str]:
    """The lines `blockfp8 check` prints under a verdict: the layer, then one line per planned GPU."""
    return [f"what blockfp8 would select for {layer} (N={n}, K={k}) with this verdict:",
            *(s.line() for s in selections)]


# ------------------------------------------------------------------------------------------------ per layer


@dataclass(frozen=True)
class LayerChoice:
    """The decision for one audited dense layer (its name and shape), or why nothing runs it."""

    layer: str
    n: int
    k: int
    pick: str  # "deepgemm/ue8m0", "triton/float32", or "error: ..."
    source: str
    guard: str  # the accuracy guard's answer for this layer: "DeepGEMM allowed", "DeepGEMM kept off", or why moot

    def as_dict(self) -> dict:
        return {"layer": self.layer, "n": self.n, "k": self.k, "pick": self.pick, "source": self.source,
                "guard": self.guard}


def layer_choices(layers: list[tuple[str, int, int]], config: BlockFP8Config, platform: Platform
                  ) -> list[LayerChoice]:
    """One decision per named ``(layer, N, K)``: what a per-layer plan in ``config.audit`` changes."""
    out = []
    for name, n, k in layers:
        g = guard_verdict(config.model_type, platform, config.audit, name)
        guard = g.reason if g.source == "none" else ("DeepGEMM kept off" if g.blocks_deep_gemm
                                                     else "DeepGEMM allowed (UE8M0)")
        try:
            d = resolve(problems(config, n, k, 1)["linear"], config, platform, kind="linear", layer=name)
            out.append(LayerChoice(name, n, k, f"{d.backend}/{d.act_scale_fmt}", d.source, guard))
        except (BackendUnavailableError, NoBackendError) as exc:
            out.append(LayerChoice(name, n, k, f"error: {str(exc).splitlines()[0]}", "error", guard))
    return out


def render_layer_choices(choices: list[LayerChoice], shown: int = 8) -> list[str]:
    """Per-layer decisions grouped by pick, largest group first, naming up to ``shown`` layers of each."""
    groups: dict[tuple[str, str], list[LayerChoice]] = {}
    for c in choices:
        groups.setdefault((c.pick, c.guard), []).append(c)
    lines = [f"per layer ({len(choices)} audited dense layers):"]
    for (pick, guard), members in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        names = ", ".join(c.layer for c in members[:shown]) + (" ..." if len(members) > shown else "")
        lines.append(f"  {len(members):4d} layers: {pick} (source: {members[0].source}; guard: {guard}): {names}")
    return lines
