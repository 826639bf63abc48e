"""Docs that hold: links stay inside the repository and resolve, no private paths or machine set-ups, and the
README's demo output is the committed transcript of the command (scripts/docs_check.py re-runs the numbers)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "AGENTS.md", *sorted((ROOT / "docs").glob("*.md")),
        *sorted((ROOT / "benchmarks" / "results").rglob("*.md"))]
FORBIDDEN = ("../shared", "/work/", "lent GPU", "the lent ", "at most 64 MiB", "machine is lent")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_no_private_references_and_links_resolve(doc):
    text = doc.read_text()
    for word in FORBIDDEN:
        assert word not in text, f"{doc.relative_to(ROOT)} mentions {word!r}"
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path = (doc.parent / target).resolve()
        assert path.is_relative_to(ROOT) and path.exists(), f"{doc.relative_to(ROOT)}: broken link {target}"


def _block_after(text: str, marker: str) -> str:
    start = text.index(marker)
    fence = text.index("```\n", start) + 4
    return text[fence:text.index("```", fence)]


def test_readme_demo_output_is_the_committed_transcript():
    transcript = (ROOT / "benchmarks" / "results" / "cpu" / "demo_check.txt").read_text()
    shown = _block_after((ROOT / "README.md").read_text(), "### What `make demo` prints")
    assert shown.strip() and shown in transcript
