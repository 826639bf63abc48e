"""The backend selection policy: one :class:`Decision` per layer, every reason recorded.

Precedence, highest first (docs/policy.md has the table):

1. explicit config / CLI flag (``BlockFP8Config``: ``linear_backend`` / ``moe_backend``, ``moe_use_deep_gemm``,
   ``use_deep_gemm``; within a level the more specific knob wins);
2. environment variable explicitly set (``BLOCKFP8_GEMM_BACKEND`` (dense only), ``BLOCKFP8_MOE_USE_DEEP_GEMM``,
   ``BLOCKFP8_USE_DEEP_GEMM``; ``BLOCKFP8_DISABLED_BACKENDS`` for automatic choices);
3. the accuracy guard (``guard.py``), asked only where DeepGEMM would otherwise have been chosen;
4. the default order (``registry.PREFERENCE_ORDER``) over the backends this platform supports.

A named backend that cannot run raises :class:`BackendUnavailableError` naming the reason. ``use_deep_gemm=True``
forces DeepGEMM past the guard; the platform must support it (else it raises), but a layer whose shape DeepGEMM
cannot implement falls back to the default order with the reason recorded. With nothing usable, one
:class:`NoBackendError` lists every reason.

Consumers (weight post-processing, activation quantization, the GEMM, warmup, logging, ``explain``) read the
decision; none re-probes the platform. Warnings ride in ``Decision.warnings`` and are logged once each by whoever
acts on the decision (:func:`log_decision`); ``explain`` shows them without logging.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from blockfp8 import envs
from blockfp8.backends import tuned
from blockfp8.backends.base import (
    BackendId,
    Decision,
    GemmBackend,
    GemmProblem,
    ScaleFmt,
    fused_act_quant_runs,
    moe_kernel_of,
    offers_grouped_moe,
)
from blockfp8.backends.guard import GuardVerdict, guard_verdict
from blockfp8.backends.registry import PREFERENCE_ORDER, get_backend, parse_backend_id
from blockfp8.config import BlockFP8Config
from blockfp8.log import info_once, warn_once
from blockfp8.platform import Platform, detect

__all__ = [
    "BackendUnavailableError",
    "NoBackendError",
    "for_candidate",
    "get_backend",
    "log_decision",
    "resolve",
]

KINDS = ("linear", "moe")
_DEEP_GEMM_ENV = {"linear": "BLOCKFP8_USE_DEEP_GEMM", "moe": "BLOCKFP8_MOE_USE_DEEP_GEMM"}


class BackendUnavailableError(ValueError):
    """An explicitly chosen backend cannot run here; the message names the choice and the reason."""


class NoBackendError(RuntimeError):
    """Automatic choice found no usable backend; the message lists every reason."""


@dataclass(frozen=True)
class _Request:
    """What one precedence level (config or env) asks of a layer kind."""

    source: str  # "config" | "env"
    setting: str  # as the user wrote it: "config.use_deep_gemm=True", "BLOCKFP8_GEMM_BACKEND=triton"
    force: BackendId | None = None
    deep_gemm_off: bool = False
    strict: bool = True  # a named backend must run on every layer; use_deep_gemm=True lets shapes fall back


@dataclass(frozen=True)
class _Capability:
    ok: bool
    reason: str
    stage: str = ""  # where it failed: "platform" | "problem" | "scale_fmt"
    scale_fmt: ScaleFmt | None = None  # the format this kernel would use here, when ok


# ------------------------------------------------------------------------------------------------ requests


def _level_request(source: str, backend: str | None, backend_setting: str, use_dg: bool | None, dg_setting: str,
                   notes: list[str]) -> _Request | None:
    """One precedence level's ask: a named backend beats the (less specific) DeepGEMM switch of the same level."""
    if backend not in (None, "auto"):
        if use_dg is not None and use_dg != (backend == "deepgemm"):
            notes.append(f"policy: {dg_setting} does not apply here: {backend_setting} is more specific")
        return _Request(source, backend_setting, force=BackendId(backend))
    if use_dg is None:
        return None
    if use_dg:
        return _Request(source, dg_setting, force=BackendId.DEEPGEMM, strict=False)
    return _Request(source, dg_setting, deep_gemm_off=True)


def _config_request(config: BlockFP8Config, kind: str, notes: list[str]) -> _Request | None:
    backend, backend_field = config.backend_knob(kind)
    use_dg, dg_field = config.deep_gemm_knob(kind)
    return _level_request("config", backend, f"config.{backend_field}={backend}", use_dg,
                          f"config.{dg_field}={use_dg}", notes)


def _env_request(kind: str, notes: list[str]) -> _Request | None:
    backend = envs.get("BLOCKFP8_GEMM_BACKEND") if kind == "linear" else None  # dense layers only
    dg_name = _DEEP_GEMM_ENV[kind] if envs.is_set(_DEEP_GEMM_ENV[kind]) else "BLOCKFP8_USE_DEEP_GEMM"
    use_dg = envs.get(dg_name)
    return _level_request("env", backend, f"BLOCKFP8_GEMM_BACKEND={backend}", use_dg,
                          f"{dg_name}={'' if use_dg is None else int(use_dg)}", notes)


def _combine(cfg: _Request | None, env: _Request | None, kind: str,
             notes: list[str], warnings: list[str]) -> _Request | None:
    """Config outranks env. Where they agree both stand; where env is overruled the user hears about it."""
    if cfg is None or env is None:
        return cfg or env
    if cfg.force is not None:
        overruled = env.force not in (None, cfg.force) or (env.deep_gemm_off and cfg.force is BackendId.DEEPGEMM)
    else:
        overruled = env.force is BackendId.DEEPGEMM
    if overruled:
        message = f"{env.setting} is ignored for {kind} layers: {cfg.setting} takes precedence"
        notes.append(f"policy: {message}")
        warnings.append(message)
        return cfg
    if cfg.deep_gemm_off and env.force is not None:  # "DeepGEMM off" and "use triton" go together
        return env
    return cfg


# ------------------------------------------------------------------------------------------------ capability


def _capability(backend: GemmBackend, problem: GemmProblem, platform: Platform, asked: ScaleFmt | None) -> _Capability:
    ok, why = backend.is_supported(platform)
    if not ok:
        return _Capability(False, why, "platform")
    ok, why = backend.can_implement(problem)
    if not ok:
        return _Capability(False, why, "problem")
    required = backend.required_scale_fmt(platform)
    if required is not None and asked is not None and asked is not required:
        return _Capability(False, f"takes only {required} scales on {platform.arch}; config.scale_fmt={asked} was "
                                  f"asked", "scale_fmt")
    fmt = required or asked or ScaleFmt.FLOAT32
    return _Capability(True, f"usable with {fmt} scales", scale_fmt=fmt)


def _guard_applies(capability: _Capability, asked: ScaleFmt | None) -> bool:
    """The guard protects against UE8M0 forced by DeepGEMM's kernel; when the user asked for UE8M0 everywhere, every
    other backend would use it too and falling back gains nothing."""
    return capability.scale_fmt is ScaleFmt.UE8M0 and asked is None


# ------------------------------------------------------------------------------------------------ resolve


def resolve(problem: GemmProblem, config: BlockFP8Config | None = None, platform: Platform | None = None,
            kind: str = "linear", layer: str | None = None) -> Decision:
    """The decision for one layer: ``kind`` "linear" (dense) or "moe" (grouped experts); ``layer``, its module
    name, lets the accuracy guard follow an audit's per-layer plan."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not valid; valid values: {', '.join(KINDS)}")
    _check_problem(problem, kind)
    config = config or BlockFP8Config()
    platform = platform or detect()
    asked = ScaleFmt(config.scale_fmt) if config.scale_fmt else None
    notes: list[str] = []
    warnings: list[str] = []
    request = _combine(_config_request(config, kind, notes), _env_request(kind, notes), kind, notes, warnings)
    disabled = {parse_backend_id(b, "BLOCKFP8_DISABLED_BACKENDS") for b in envs.get("BLOCKFP8_DISABLED_BACKENDS")}
    caps = {b: _capability(get_backend(b), problem, platform, asked) for b in PREFERENCE_ORDER}

    if request is not None and request.force is not None:
        forced = _resolve_forced(request, caps, kind, config, platform, notes, warnings, layer)
        if forced is not None:
            return _decision(problem, platform, kind, forced, request.source, caps, notes, warnings, (forced,), ())
    deep_gemm_off = request if request is not None and request.deep_gemm_off else None

    chosen, source, allowed = None, "default", []
    guarded: GuardVerdict | None = None
    for backend_id in preference_order(kind):
        cap = caps[backend_id]
        if not cap.ok:
            notes.append(f"{backend_id}: skipped: {cap.reason}")
            continue
        skip_source, why = None, ""
        if backend_id is BackendId.DEEPGEMM and deep_gemm_off is not None:
            skip_source, why = deep_gemm_off.source, f"off by {deep_gemm_off.setting}"
        elif backend_id in disabled:
            skip_source, why = "env", "disabled by BLOCKFP8_DISABLED_BACKENDS"
        elif backend_id is BackendId.DEEPGEMM and _guard_applies(cap, asked):
            # Reached only when DeepGEMM is usable and allowed, i.e. it would otherwise be chosen.
            verdict = guard_verdict(config.model_type, platform, config.audit, layer)
            if verdict.blocks_deep_gemm:
                guarded, skip_source = verdict, verdict.source
                why = f"kept off by the accuracy guard: {verdict.reason}; evidence: {verdict.evidence}"
            else:
                notes.append(f"{backend_id}: accuracy guard: {verdict.reason}")
        if skip_source is not None:
            notes.append(f"{backend_id}: skipped: {why}")
            if chosen is None and source == "default":
                source = skip_source
            continue
        allowed.append(backend_id)
        if chosen is None:
            chosen = backend_id
            notes.append(f"{backend_id}: selected ({cap.reason}, source: {source})")
        else:
            notes.append(f"{backend_id}: usable, lower preference than {chosen}")
    if chosen is None:
        raise NoBackendError(f"no GEMM backend can run this {kind} layer (N={problem.n}, K={problem.k}) on "
                             f"{platform.describe()}:\n  " + "\n  ".join(notes))
    if guarded is not None:
        warnings.append(_guard_warning(kind, config.model_type, platform, guarded, chosen, caps[chosen]))
    candidates = tuple(b for b in allowed if caps[b].scale_fmt is caps[chosen].scale_fmt)
    if kind == "moe" and offers_grouped_moe(get_backend(chosen)):  # dispatch never falls to a per-expert loop
        candidates = tuple(b for b in candidates if offers_grouped_moe(get_backend(b)))
    plan = _dispatch_plan(problem, platform, candidates, notes, kind)
    return _decision(problem, platform, kind, chosen, source, caps, notes, warnings, candidates, plan)


def preference_order(kind: str) -> tuple[BackendId, ...]:
    """The default order. For MoE a backend with a grouped kernel (one launch for all experts) always comes before
    one that loops over experts (DeepGEMM's grouped kernels, then Triton's fused MoE, ahead of scaled_mm on
    Hopper); the reference is the last resort either way."""
    if kind != "moe":
        return PREFERENCE_ORDER
    rest = [b for b in PREFERENCE_ORDER if b is not BackendId.REFERENCE]
    rest.sort(key=lambda b: not offers_grouped_moe(get_backend(b)))  # stable: keeps the order within each group
    return (*rest, BackendId.REFERENCE)


def _dispatch_plan(problem: GemmProblem, platform: Platform, candidates: tuple[BackendId, ...],
                   notes: list[str], kind: str = "linear") -> tuple[tuple[int, BackendId], ...]:
    """Per-M-bucket backends (tokens per call for MoE) from the shipped tuned table for this GPU model, within
    ``candidates`` (automatic choice only: an explicit choice has one candidate). Consecutive buckets with the same
    backend are merged; empty when the first candidate serves every M."""
    keys = tuned.platform_keys(platform)
    if len(candidates) < 2 or not keys:
        return ()
    gpu = keys[0]
    plan: list[tuple[int, BackendId]] = []
    for bucket in tuned.M_BUCKETS:
        if kind == "moe":
            pick = tuned.moe_dispatch_backend(keys, bucket, problem.num_experts, problem.n, problem.k, candidates)
        else:
            pick = tuned.dispatch_backend(keys, bucket, problem.n, problem.k, candidates)
        backend = parse_backend_id(pick)
        if plan and plan[-1][1] is backend:
            plan[-1] = (bucket, backend)
        else:
            plan.append((bucket, backend))
    if all(b is candidates[0] for _, b in plan):
        return ()
    lo, shown = 1, []
    for bucket, backend in plan:
        shown.append(f"M {lo}..{bucket}: {backend}" if bucket != plan[-1][0] else f"M >= {lo}: {backend}")
        lo = bucket + 1
    what = f"tokens from the MoE table for {gpu}, E={problem.num_experts}" if kind == "moe" else \
        f"M bucket from the tuned table for {gpu}"
    notes.append(f"dispatch: per {what}, N={problem.n} K={problem.k}: " + ", ".join(shown))
    return tuple(plan)


def _resolve_forced(request: _Request, caps: dict[BackendId, _Capability], kind: str, config: BlockFP8Config,
                    platform: Platform, notes: list[str], warnings: list[str], layer: str | None) -> BackendId | None:
    """The backend the user named, or None when use_deep_gemm=True meets a shape DeepGEMM cannot implement."""
    forced = request.force
    cap = caps[forced]
    if not cap.ok:
        if request.strict or cap.stage != "problem":
            raise BackendUnavailableError(f"{kind} backend {forced} (from {request.setting}) cannot be used on "
                                          f"{platform.describe()}: {cap.reason}")
        notes.append(f"{forced}: cannot implement this shape: {cap.reason}; falling back to the default order")
        return None
    for backend_id in PREFERENCE_ORDER:
        if backend_id is not forced:
            notes.append(f"{backend_id}: not considered, {request.setting} names {forced} ({caps[backend_id].reason})")
    notes.insert(0, f"{forced}: selected by {request.setting} ({cap.reason})")
    if forced is BackendId.DEEPGEMM and cap.scale_fmt is ScaleFmt.UE8M0:
        verdict = guard_verdict(config.model_type, platform, config.audit, layer)
        if verdict.blocks_deep_gemm:
            notes.append(f"{forced}: accuracy guard overridden by {request.setting}: {verdict.reason}")
            warnings.append(
                f"DeepGEMM forced on for {kind} layers of model_type={config.model_type} by {request.setting} "
                f"despite a known accuracy risk: on {platform.arch} its kernel takes only UE8M0 (power-of-two) "
                f"scales ({verdict.evidence})"
            )
    return forced


def _guard_warning(kind: str, model_type: str | None, platform: Platform, verdict: GuardVerdict, chosen: BackendId,
                   cap: _Capability) -> str:
    knob = f"{_DEEP_GEMM_ENV[kind]}=1 or {'moe_' if kind == 'moe' else ''}use_deep_gemm=True"
    known = "measured by the audit" if verdict.source == "audit" else "known"
    which = "the layers the audit plan keeps on float32 scales" if verdict.reason.startswith("audit plan") \
        else f"{kind} layers"
    return (
        f"DeepGEMM auto-disabled for {which} of model_type={model_type} on {platform.arch}: its kernel there "
        f"takes only UE8M0 (power-of-two) scales, {known} to lose accuracy for this model ({verdict.evidence}). "
        f"Selected {chosen} with {cap.scale_fmt} scales instead. Set {knob} to force DeepGEMM."
    )


def _decision(problem: GemmProblem, platform: Platform, kind: str, chosen: BackendId, source: str,
              caps: dict[BackendId, _Capability], notes: list[str], warnings: list[str],
              candidates: tuple[BackendId, ...], plan: tuple[tuple[int, BackendId], ...]) -> Decision:
    fmt = caps[chosen].scale_fmt
    checkpoint_ue8m0 = problem.checkpoint_scale_fmt is ScaleFmt.UE8M0
    backend = get_backend(chosen)
    act_layout, weight_layout = backend.scale_layouts(platform)
    return Decision(
        kind=kind,
        backend=chosen,
        weight_scale_fmt=ScaleFmt.UE8M0 if checkpoint_ue8m0 else fmt,
        act_scale_fmt=fmt,
        act_scale_layout=act_layout,
        weight_scale_layout=weight_layout,
        requant_weight_ue8m0=fmt is ScaleFmt.UE8M0 and not checkpoint_ue8m0,
        use_deep_gemm=chosen is BackendId.DEEPGEMM,
        source=source,
        arch=platform.arch,
        reasons=tuple(notes),
        warnings=tuple(warnings),
        candidates=candidates,
        fp8_dtype=problem.fp8_dtype,
        simulated=platform.simulated,
        dispatch=plan,
        grouped_moe=kind == "moe" and offers_grouped_moe(backend),
        moe_kernel=moe_kernel_of(backend) if kind == "moe" else "",
        fused_act_quant=fused_act_quant_runs(platform, problem),
        tuned_keys=tuned.platform_keys(platform),
    )


def _check_problem(problem: GemmProblem, kind: str) -> None:
    if not isinstance(problem, GemmProblem):
        raise TypeError(f"problem must be a GemmProblem, got {type(problem).__name__}")
    for name in ("n", "k", "num_experts"):
        value = getattr(problem, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"problem.{name}={value!r} must be a positive integer")
    if kind == "moe" and not problem.grouped:
        raise ValueError("kind='moe' needs a grouped problem: GemmProblem(..., grouped=True, num_experts=E)")


# ------------------------------------------------------------------------------------------------ consumers


def for_candidate(decision: Decision, backend_id: BackendId | str, platform: Platform | None = None) -> Decision:
    """The decision re-targeted to one of its candidates (per-M-bucket dispatch): same scale format, that backend's
    layouts. Warnings stay with the original decision, which is the one to log."""
    backend_id = parse_backend_id(backend_id)
    if backend_id not in decision.candidates:
        raise ValueError(f"{backend_id} is not a candidate of this {decision.kind} decision; candidates: "
                         f"{', '.join(map(str, decision.candidates)) or 'none'}")
    backend = get_backend(backend_id)
    act_layout, weight_layout = backend.scale_layouts(platform or detect())
    return replace(decision, backend=backend_id, act_scale_layout=act_layout, weight_scale_layout=weight_layout,
                   use_deep_gemm=backend_id is BackendId.DEEPGEMM, warnings=(), dispatch=(),
                   grouped_moe=decision.kind == "moe" and offers_grouped_moe(backend),
                   moe_kernel=moe_kernel_of(backend) if decision.kind == "moe" else "",
                   reasons=(*decision.reasons, f"{backend_id}: candidate of the {decision.backend} decision"))


def log_decision(decision: Decision) -> None:
    """Log a decision's warnings, each once per process however many layers share it."""
    for message in decision.warnings:
        warn_once(message)
    info_once(f"{decision.kind} layers: {decision.backend} with {decision.act_scale_fmt} activation scales "
              f"(source: {decision.source}{', planned for ' + str(decision.arch) if decision.simulated else ''})")
