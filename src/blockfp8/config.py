"""BlockFP8Config: what a checkpoint and the user ask for, before any backend is chosen.

Built from an HF ``quantization_config`` dict (:meth:`BlockFP8Config.from_hf_quant_config`), from a whole
``config.json`` (``formats.hf_config.block_config``) or from CLI flags (``cli.args``). Fields left at their
"decide for me" value (``None`` / ``"auto"``) are resolved by the policy in ``blockfp8.backends.select``; a field
set here is an *explicit* choice and outranks every environment variable.
Stays free of torch and of the backends, so the CLI and the audit can build it cheaply.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from blockfp8.envs import BACKEND_IDS

SCALE_FMTS = ("float32", "ue8m0")
ACTIVATION_SCHEMES = ("dynamic",)
FP8_FORMATS = ("e4m3",)


class ConfigError(ValueError):
    """A config field holds a value we do not accept; the message names the field."""


@dataclass(frozen=True)
class AuditVerdict:
    """A measured verdict on UE8M0 scales for one model, fed to the accuracy guard (filled by the audit).

    ``ue8m0_ok=False`` makes the guard keep DeepGEMM off where its kernel takes only UE8M0 scales, even for a model
    type the hand-kept list does not name; ``True`` lifts the list's verdict for a listed type. ``evidence`` says
    what was measured (shown in the warning and in ``explain``).
    """

    ue8m0_ok: bool
    evidence: str
    model_type: str | None = None  # the model it was measured on; None = whatever model the config is for
    # A per-layer plan (the audit's ``plan``): layers kept on float32 scales, layers allowed UE8M0 kernels. A
    # layer named in neither (not audited) follows ``ue8m0_ok``.
    float32_layers: frozenset[str] = frozenset()
    ue8m0_layers: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for name in ("float32_layers", "ue8m0_layers"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(x, str) for x in value):
                raise ConfigError(f"audit.{name} must be a set of module names")
            object.__setattr__(self, name, frozenset(value))
        if self.float32_layers & self.ue8m0_layers:
            both = sorted(self.float32_layers & self.ue8m0_layers)
            raise ConfigError(f"audit plan names {both[0]} in both float32_layers and ue8m0_layers")
        if not isinstance(self.ue8m0_ok, bool):
            raise ConfigError(f"audit.ue8m0_ok={self.ue8m0_ok!r} must be True or False")
        if not isinstance(self.evidence, str) or not self.evidence.strip():
            raise ConfigError("audit.evidence must say what was measured (a non-empty string)")

    def layer_ue8m0_ok(self, layer: str | None) -> tuple[bool, str]:
        """Whether UE8M0 is acceptable for ``layer`` and where that answer comes from ("plan" or "model")."""
        if layer in self.float32_layers:
            return False, "plan"
        if layer in self.ue8m0_layers:
            return True, "plan"
        return self.ue8m0_ok, "model"


@dataclass(frozen=True)
class BlockFP8Config:
    weight_block_size: tuple[int, int] = (128, 128)
    activation_scheme: str = "dynamic"
    scale_fmt: str | None = None  # "float32" | "ue8m0" | None = the policy decides per backend
    use_deep_gemm: bool | None = None  # None = decide (guard, defaults); True = force on; False = off everywhere
    moe_use_deep_gemm: bool | None = None  # MoE layers only; None = follow use_deep_gemm
    linear_backend: str = "auto"  # "auto" or a backend id
    moe_backend: str = "auto"
    ignored_layers: tuple[str, ...] = ()  # module names left unquantized (HF modules_to_not_convert + ignored_layers)
    model_type: str | None = None  # HF (text) model type, e.g. "qwen3_5_text": what the accuracy guard looks at
    audit: AuditVerdict | None = None  # measured UE8M0 verdict (the audit issue); None = only the hand-kept list

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise in place once, here
        set_(self, "weight_block_size", _block_size(self.weight_block_size))
        if self.activation_scheme not in ACTIVATION_SCHEMES:
            raise ConfigError(
                f"activation_scheme={self.activation_scheme!r} is not supported; valid values: "
                f"{', '.join(ACTIVATION_SCHEMES)} (static activation scales are not block-scaled FP8)"
            )
        if self.scale_fmt is not None:
            set_(self, "scale_fmt", _choice("scale_fmt", self.scale_fmt, SCALE_FMTS))
        for name in ("use_deep_gemm", "moe_use_deep_gemm"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ConfigError(f"{name}={value!r} must be True, False or None (decide automatically)")
        for name in ("linear_backend", "moe_backend"):
            set_(self, name, _choice(name, getattr(self, name), BACKEND_IDS))
        if isinstance(self.ignored_layers, str) or not all(isinstance(x, str) for x in self.ignored_layers):
            raise ConfigError(f"ignored_layers={self.ignored_layers!r} must be a list of module names")
        set_(self, "ignored_layers", tuple(self.ignored_layers))
        if self.model_type is not None and (not isinstance(self.model_type, str) or not self.model_type.strip()):
            raise ConfigError(f"model_type={self.model_type!r} must be a non-empty string or None")
        if self.audit is not None and not isinstance(self.audit, AuditVerdict):
            raise ConfigError(f"audit must be an AuditVerdict or None, got {type(self.audit).__name__}")

    def deep_gemm_knob(self, kind: str) -> tuple[bool | None, str]:
        """The use-DeepGEMM setting for a layer kind and the field it came from (MoE's own knob wins there)."""
        if kind == "moe" and self.moe_use_deep_gemm is not None:
            return self.moe_use_deep_gemm, "moe_use_deep_gemm"
        return self.use_deep_gemm, "use_deep_gemm"

    def backend_knob(self, kind: str) -> tuple[str, str]:
        name = "moe_backend" if kind == "moe" else "linear_backend"
        return getattr(self, name), name

    @classmethod
    def from_hf_quant_config(cls, quant_config: Mapping[str, Any], **overrides: Any) -> BlockFP8Config:
        """From an HF / DeepSeek ``quantization_config`` dict. ``overrides`` set any other field (model_type, ...)."""
        if not isinstance(quant_config, Mapping):
            raise ConfigError(f"quantization_config must be a JSON object, got {type(quant_config).__name__}")
        method = quant_config.get("quant_method", "fp8")
        if method != "fp8":
            raise ConfigError(f"quantization_config.quant_method={method!r} is not block FP8; expected 'fp8'")
        fmt = quant_config.get("fmt", "e4m3")
        if fmt not in FP8_FORMATS:
            valid = ", ".join(FP8_FORMATS)
            raise ConfigError(f"quantization_config.fmt={fmt!r} is not supported; valid values: {valid}")
        if quant_config.get("weight_block_size") is None:
            raise ConfigError(
                "quantization_config.weight_block_size is missing: per-tensor FP8 is not block-scaled FP8"
            )
        skip: list[str] = []
        for key in ("ignored_layers", "modules_to_not_convert"):  # vLLM and HF spellings: read both
            names = quant_config.get(key) or []
            if isinstance(names, str) or not isinstance(names, Sequence):
                raise ConfigError(f"quantization_config.{key}={names!r} must be a list of module names")
            skip += [n for n in names if n not in skip]
        kwargs: dict[str, Any] = {
            "weight_block_size": quant_config["weight_block_size"],
            "activation_scheme": quant_config.get("activation_scheme", "dynamic"),
            "scale_fmt": quant_config.get("scale_fmt"),
            "ignored_layers": tuple(skip),
        }
        kwargs.update(overrides)
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            raise ConfigError(f"quantization_config: {exc}") from None


def _choice(name: str, value: Any, valid: Sequence[str]) -> str:
    text = str(getattr(value, "value", value)).strip().lower()  # accepts the str-Enums of backends.base too
    if text not in valid:
        raise ConfigError(f"{name}={value!r} is not valid; valid values: {', '.join(valid)}")
    return text


def _block_size(value: Any) -> tuple[int, int]:
    ok = isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    if not ok:
        raise ConfigError(f"weight_block_size={value!r} must be two positive integers, e.g. [128, 128]")
    return int(value[0]), int(value[1])
