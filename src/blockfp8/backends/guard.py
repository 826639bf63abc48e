"""The accuracy guard: should DeepGEMM stay off for this model on this GPU because its kernel takes only UE8M0 scales?

The known-bad model types are data (``blockfp8/data/guard.json``), not code. A measured verdict from the audit
(``BlockFP8Config.audit``) outranks the list either way: it can keep DeepGEMM off for a type nobody listed yet, or
lift the list's verdict when a measurement shows UE8M0 is harmless for that model.

A verdict with a per-layer plan (``AuditVerdict.float32_layers`` / ``ue8m0_layers``) answers per layer: the plan's
float32 layers keep DeepGEMM off, its UE8M0 layers may use it, a layer the plan does not name follows the model
verdict. The guard only answers the question; ``select`` asks it only where DeepGEMM would otherwise have been
chosen, so a machine without DeepGEMM never hears of it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from blockfp8.config import AuditVerdict
    from blockfp8.platform import Platform

GUARD_DATA = "guard.json"


@dataclass(frozen=True)
class GuardVerdict:
    blocks_deep_gemm: bool  # True: keep DeepGEMM off (unless the user forces it)
    source: str  # "guard" (the hand-kept list) | "audit" (a measurement) | "none" (nothing to say)
    reason: str  # one line, for Decision.reasons and `explain`
    evidence: str = ""  # what the verdict rests on (a measurement, an issue number)


@dataclass(frozen=True)
class GuardData:
    ue8m0_only_families: frozenset[int]
    known_bad: dict[str, str]  # model_type -> evidence


@functools.lru_cache(maxsize=1)
def load_guard_data() -> GuardData:
    path = resources.files("blockfp8") / "data" / GUARD_DATA
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        families = frozenset(int(f) for f in raw["ue8m0_only_families"])
        known_bad = {str(e["model_type"]): str(e["evidence"]) for e in raw["known_bad"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RuntimeError(f"{path}: not a valid guard file ({type(exc).__name__}: {exc})") from exc
    return GuardData(families, known_bad)


def guard_verdict(model_type: str | None, platform: Platform, audit: AuditVerdict | None = None,
                  layer: str | None = None) -> GuardVerdict:
    """Whether DeepGEMM should stay off for ``model_type`` (its module ``layer``, when known) on ``platform``, with
    the evidence.

    Only where DeepGEMM's kernel takes only UE8M0 scales (data: ``ue8m0_only_families``); elsewhere it runs with
    float32 scales and there is nothing to guard against.
    """
    data = load_guard_data()
    if platform.family not in data.ue8m0_only_families:
        return GuardVerdict(False, "none", f"DeepGEMM takes float32 scales on {platform.arch or 'this device'}")
    if audit is not None and audit.model_type in (None, model_type):
        ok, scope = audit.layer_ue8m0_ok(layer)
        if scope == "plan":
            what = "allows UE8M0 for" if ok else "keeps float32 scales for"
            return GuardVerdict(not ok, "audit", f"audit plan {what} {layer}", audit.evidence)
        verdict = "UE8M0 harmful" if not ok else "UE8M0 acceptable"
        return GuardVerdict(not ok, "audit", f"audit verdict for model_type={model_type}: {verdict}",
                            audit.evidence)
    if model_type in data.known_bad:
        return GuardVerdict(True, "guard", f"model_type={model_type} is in the known-bad list ({GUARD_DATA})",
                            data.known_bad[model_type])
    skipped_audit = f"; audit is for model_type={audit.model_type}, not applied" if audit is not None else ""
    return GuardVerdict(False, "none", f"model_type={model_type} is not in the known-bad list and has no audit "
                                       f"verdict{skipped_audit}")
