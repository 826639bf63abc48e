"""Evaluation configs: one YAML file per (model, task), validated before anything heavy is loaded.

Every error is a :class:`EvalConfigError` that names the file and the field (``variants[1].tolerance``); the CLI
turns it into exit code 2. Fields (``*`` = required)::

    model*            "smollm2" (the embedded SmolLM2-135M-Instruct) or a transformers model folder
    task*             gsm8k | lambada
    variants*         list of {name*, blockfp8, accuracy_threshold*, tolerance}
                        blockfp8: null/absent = the unquantized baseline in `dtype`; otherwise a mapping of
                        BlockFP8Config fields (scale_fmt, linear_backend, use_deep_gemm, weight_block_size, ...)
                        or {plan: REPORT}: an audit report.json with a per-layer plan (relative to the config's
                        folder): its float32 layers get float32 scales, every other layer UE8M0 scales
                        tolerance: default 0.08 (vLLM's default); a variant passes when
                        accuracy >= accuracy_threshold - tolerance
    num_questions     first N items of the task (default: all: gsm8k 1319, lambada 5153)
    num_fewshot       gsm8k: 0..8 (default 5); lambada: 0
    max_new_tokens    gsm8k generation budget (default 256)
    batch_size        prompts per forward / generate call (default 32)
    seed              bootstrap seed (default 0); decoding is greedy
    bootstrap_samples paired-bootstrap resamples (default 1000)
    baseline          variant the others are compared with (default: the first)
    dtype             bfloat16 | float16 | float32 (default bfloat16): the model's dtype before quantization
    data_dir          folder holding the vendored data (default: data/ of the source checkout)
    description       free text
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blockfp8.datasets import DATA_FILES
from blockfp8.eval.tasks import MAX_FEWSHOT
from blockfp8.paths import InputError, quote, read_bounded

TASKS = tuple(DATA_FILES)
DTYPES = ("bfloat16", "float16", "float32")
DEFAULT_TOLERANCE = 0.08
MAX_CONFIG_BYTES = 2**20  # a config is a few hundred bytes
MAX_DEPTH = 16  # the deepest field is variants[i].blockfp8.weight_block_size: 4 levels
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
# BlockFP8Config fields that have no plain YAML form.
_NOT_FROM_YAML = ("audit",)
# A plan variant's keys: ``plan`` (the report, as written) and the float32 layers read from it.
_PLAN_KEYS = ("plan", "plan_float32_layers")


class EvalConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Variant:
    name: str
    blockfp8: dict[str, Any] | None  # None = unquantized baseline
    accuracy_threshold: float
    tolerance: float = DEFAULT_TOLERANCE

    @property
    def plan_layers(self) -> frozenset[str] | None:
        """The layers a plan variant keeps on float32 scales (None: not a plan variant)."""
        if not self.blockfp8 or "plan" not in self.blockfp8:
            return None
        return frozenset(self.blockfp8["plan_float32_layers"])

    def quant_config(self):
        """The BlockFP8Config for this variant, or None for the baseline (a plan variant: its other fields)."""
        if self.blockfp8 is None:
            return None
        from blockfp8.config import BlockFP8Config

        return BlockFP8Config(**{k: v for k, v in self.blockfp8.items() if k not in _PLAN_KEYS})

    def passes(self, accuracy: float) -> bool:
        return accuracy >= self.accuracy_threshold - self.tolerance


@dataclass(frozen=True)
class EvalConfig:
    model: str
    task: str
    variants: tuple[Variant, ...]
    num_questions: int
    num_fewshot: int = 0
    max_new_tokens: int = 256
    batch_size: int = 32
    seed: int = 0
    bootstrap_samples: int = 1000
    baseline: str = ""
    dtype: str = "bfloat16"
    data_dir: str | None = None
    description: str = ""
    path: str = field(default="", compare=False)

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)


_TOP_FIELDS = {
    "model",
    "task",
    "variants",
    "num_questions",
    "num_fewshot",
    "max_new_tokens",
    "batch_size",
    "seed",
    "bootstrap_samples",
    "baseline",
    "dtype",
    "data_dir",
    "description",
}
_REQUIRED = ("model", "task", "variants")
_VARIANT_FIELDS = {"name", "blockfp8", "accuracy_threshold", "tolerance"}


def _check_events(text: str, source: str) -> None:
    """Refuse YAML aliases (``*name``: a 1 KB file of nested aliases expands to gigabytes) and nesting deeper than
    a config needs, walking the parser's events (the parser is not recursive; the composer that builds the
    objects is, and runs only afterwards)."""
    import yaml

    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            line = event.start_mark.line + 1 if event.start_mark else "?"
            raise EvalConfigError(f"{source}: line {line}: YAML aliases (*name) are not accepted in a config")
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise EvalConfigError(f"{source}: nested more than {MAX_DEPTH} levels deep: not a config")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


@functools.cache
def _loader():
    """safe_load's loader with only the types a config holds: a date reads as its text, and the binary, set and
    ordered-map tags are refused (their constructors also fail with arbitrary exceptions on malformed values)."""
    import yaml

    class ConfigLoader(yaml.SafeLoader):
        pass

    ConfigLoader.yaml_constructors = dict(yaml.SafeLoader.yaml_constructors)
    for tag in ("binary", "set", "omap", "pairs"):
        ConfigLoader.yaml_constructors.pop(f"tag:yaml.org,2002:{tag}", None)
    ConfigLoader.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_yaml_str)
    return ConfigLoader


def load_config(path: str | Path) -> EvalConfig:
    """Read and validate a YAML config file: a regular UTF-8 file of at most 1 MiB, plain YAML (no aliases, no
    tags beyond safe_load's, bounded nesting)."""
    import yaml

    path = Path(path)
    try:
        text = read_bounded(path, MAX_CONFIG_BYTES, "config").decode("utf-8")
    except InputError as exc:
        raise EvalConfigError(str(exc)) from None
    except OSError as exc:
        raise EvalConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise EvalConfigError(f"{path}: not UTF-8 text (byte {exc.start}): a config is a UTF-8 YAML file") from None
    try:
        _check_events(text, str(path))
        raw = yaml.load(text, Loader=_loader())  # noqa: S506 - a SafeLoader with fewer types
    except EvalConfigError:
        raise
    except yaml.YAMLError as exc:
        raise EvalConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())[:300]}") from None
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:  # e.g. an int past Python's digit limit
        raise EvalConfigError(f"{path}: a value cannot be read ({type(exc).__name__}: {str(exc)[:200]})") from None
    return parse_config(raw, source=str(path))


def parse_config(raw: Any, source: str = "<config>") -> EvalConfig:
    """Validate a config mapping (as read from YAML)."""

    def fail(name: str, message: str) -> EvalConfigError:
        return EvalConfigError(f"{source}: field '{name[:80]}': {message}")

    if not isinstance(raw, dict):
        raise EvalConfigError(f"{source}: a config must be a YAML mapping of fields, got {type(raw).__name__}")
    unknown = sorted(set(map(str, raw)) - _TOP_FIELDS)
    if unknown:
        raise fail(unknown[0], f"unknown field; valid fields: {', '.join(sorted(_TOP_FIELDS))}")
    for name in _REQUIRED:
        if raw.get(name) is None:
            raise fail(name, "required field is missing")

    model = _string(raw["model"], "model", fail)
    _check_model(model, fail)
    task = _string(raw["task"], "task", fail)
    if task not in TASKS:
        raise fail("task", f"unknown task {quote(task)}; valid tasks: {', '.join(TASKS)}")
    rows = DATA_FILES[task].rows
    num_questions = _int(raw.get("num_questions", rows), "num_questions", fail, lo=1, hi=rows)
    fewshot_hi = MAX_FEWSHOT if task == "gsm8k" else 0
    num_fewshot = _int(raw.get("num_fewshot", 5 if task == "gsm8k" else 0), "num_fewshot", fail, lo=0, hi=fewshot_hi)
    dtype = _string(raw.get("dtype", "bfloat16"), "dtype", fail)
    if dtype not in DTYPES:
        raise fail("dtype", f"{quote(dtype)} is not valid; valid values: {', '.join(DTYPES)}")
    data_dir = raw.get("data_dir")
    if data_dir is not None:
        data_dir = _string(data_dir, "data_dir", fail)

    variants_raw = raw["variants"]
    if not isinstance(variants_raw, list) or not variants_raw:
        raise fail("variants", "must be a non-empty list of variants")
    variants = tuple(_variant(v, f"variants[{i}]", fail, Path(source).parent) for i, v in enumerate(variants_raw))
    names = [v.name for v in variants]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise fail(f"variants[{i}].name", f"duplicate variant name {quote(name)}")
    baseline = raw.get("baseline", names[0])
    baseline = _string(baseline, "baseline", fail)
    if baseline not in names:
        raise fail("baseline", f"{quote(baseline)} is not one of the variants: {', '.join(names)}")

    return EvalConfig(
        model=model,
        task=task,
        variants=variants,
        num_questions=num_questions,
        num_fewshot=num_fewshot,
        max_new_tokens=_int(raw.get("max_new_tokens", 256), "max_new_tokens", fail, lo=1, hi=32768),
        batch_size=_int(raw.get("batch_size", 32), "batch_size", fail, lo=1, hi=65536),
        seed=_int(raw.get("seed", 0), "seed", fail, lo=0, hi=2**32 - 1),
        bootstrap_samples=_int(raw.get("bootstrap_samples", 1000), "bootstrap_samples", fail, lo=10, hi=10**6),
        baseline=baseline,
        dtype=dtype,
        data_dir=data_dir,
        description=_string(raw.get("description", ""), "description", fail, allow_empty=True),
        path=source,
    )


def _variant(raw: Any, where: str, fail, folder: Path) -> Variant:
    if not isinstance(raw, dict):
        raise fail(where, f"a variant must be a mapping with fields {', '.join(sorted(_VARIANT_FIELDS))}")
    unknown = sorted(set(map(str, raw)) - _VARIANT_FIELDS)
    if unknown:
        raise fail(f"{where}.{unknown[0]}", f"unknown field; valid fields: {', '.join(sorted(_VARIANT_FIELDS))}")
    for name in ("name", "accuracy_threshold"):
        if raw.get(name) is None:
            raise fail(f"{where}.{name}", "required field is missing")
    name = _string(raw["name"], f"{where}.name", fail)
    if not _NAME_RE.match(name):
        raise fail(f"{where}.name", f"{quote(name)} must be letters, digits and _ . + - (it names JSON keys and files)")
    return Variant(
        name=name,
        blockfp8=_blockfp8(raw.get("blockfp8"), f"{where}.blockfp8", fail, folder),
        accuracy_threshold=_fraction(raw["accuracy_threshold"], f"{where}.accuracy_threshold", fail),
        tolerance=_fraction(raw.get("tolerance", DEFAULT_TOLERANCE), f"{where}.tolerance", fail),
    )


def _blockfp8(raw: Any, where: str, fail, folder: Path) -> dict[str, Any] | None:
    """Check the settings against BlockFP8Config now, so a bad field fails before any model is loaded."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise fail(where, "must be a mapping of BlockFP8Config fields, or null for the unquantized baseline")
    from blockfp8.config import BlockFP8Config, ConfigError

    valid = sorted(f.name for f in dataclasses.fields(BlockFP8Config) if f.name not in _NOT_FROM_YAML)
    raw = dict(raw)
    if "plan" in raw:
        if "scale_fmt" in raw:
            raise fail(f"{where}.scale_fmt", "a plan variant takes its scale formats from the plan")
        raw["plan_float32_layers"] = _plan_layers(raw["plan"], f"{where}.plan", fail, folder)
    for key in map(str, raw):
        if key not in valid and key not in _PLAN_KEYS:
            raise fail(f"{where}.{key}", f"unknown BlockFP8Config field; valid fields: plan, {', '.join(valid)}")
    try:
        BlockFP8Config(**{k: v for k, v in raw.items() if k not in _PLAN_KEYS})
    except (ConfigError, TypeError, ValueError) as exc:
        raise fail(where, str(exc)[:300]) from None
    return dict(raw)


def _plan_layers(value: Any, where: str, fail, folder: Path) -> list[str]:
    """The float32 layers of an audit report's plan (read as plain JSON: the report's ``plan.float32_layers``)."""
    import json

    if not isinstance(value, str) or not value.strip():
        raise fail(where, f"must be the path of an audit report.json with a plan, got {value!r}")
    path = Path(value) if Path(value).is_absolute() else folder / value
    if path.is_dir():
        path = path / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise fail(where, f"{path}: cannot read ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise fail(where, f"{path}: not valid JSON ({exc})") from None
    plan = report.get("plan") if isinstance(report, dict) else None
    layers = plan.get("float32_layers") if isinstance(plan, dict) else None
    if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
        raise fail(where, f"{path}: field plan.float32_layers is missing (audit with --e2e and a plan)")
    return layers


def _check_model(model: str, fail) -> None:
    from blockfp8.models import EMBEDDED

    if model in EMBEDDED or (model.lower().endswith(".gguf") and Path(model).is_file()):
        return
    if (Path(model) / "config.json").is_file():
        from blockfp8.formats.errors import CheckpointError
        from blockfp8.formats.hf_config import check_model_sizes, read_config_json

        try:  # before transformers builds anything from it
            check_model_sizes(read_config_json(model), Path(model) / "config.json")
        except CheckpointError as exc:
            raise fail("model", str(exc)[:500]) from None
        return
    if Path(model).is_dir():
        raise fail("model", f"{quote(model)} is a folder without config.json, not a model folder")
    raise fail("model", f"unknown model {quote(model)}: neither an embedded model ({', '.join(EMBEDDED)}), a .gguf "
                        "file nor a folder")


def _string(value: Any, name: str, fail, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise fail(name, f"must be a {'' if allow_empty else 'non-empty '}string, got {quote(value)}")
    return value.strip()


def _int(value: Any, name: str, fail, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(name, f"must be an integer, got {quote(value)}")
    if not lo <= value <= hi:
        raise fail(name, f"must be in [{lo}, {hi}], got {value}")
    return value


def _fraction(value: Any, name: str, fail) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(name, f"must be a number in [0, 1], got {quote(value)}")
    if not 0.0 <= float(value) <= 1.0:
        raise fail(name, f"must be in [0, 1], got {value}")
    return float(value)
