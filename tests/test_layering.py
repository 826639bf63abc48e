"""The import layering of STYLE.md, checked on the source (every import, also those inside functions)."""

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "blockfp8"
STDLIB = set(sys.stdlib_module_names) | {"__future__"}
BACKEND_MODULES = {"deepgemm", "scaled_mm", "triton", "reference"}


def modules():
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        yield ".".join(p for p in rel.parts if p != "__init__"), path


def imports(path: Path, top_level_only: bool = False):
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from pkg import sub` imports pkg/__init__ (kept lean) and pkg.sub: judge the submodule
            yield node.module if node.module != "blockfp8.backends" else "blockfp8.backends.__init__"
            yield from (f"{node.module}.{a.name}" for a in node.names)


def under(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


ALL = list(modules())


@pytest.mark.parametrize("mod,path", ALL, ids=[m for m, _ in ALL])
def test_layering(mod, path):
    found = set(imports(path))
    ours = {n for n in found if under(n, "blockfp8")}
    if mod in ("blockfp8.envs", "blockfp8.log"):
        third_party = {n.split(".")[0] for n in found} - STDLIB - {"blockfp8"}
        assert not third_party, f"{mod} must use the stdlib only, imports {third_party}"
        assert ours <= {"blockfp8", "blockfp8.envs"}, f"{mod} imports {ours}"
    if under(mod, "blockfp8.quant", "blockfp8.platform", "blockfp8.config"):
        bad = {n for n in ours if under(n, "blockfp8.backends", "blockfp8.nn", "blockfp8.formats", "blockfp8.audit",
                                        "blockfp8.eval", "blockfp8.bench", "blockfp8.cli")}
        assert not bad, f"{mod} (layer 2) imports higher layers: {bad}"
    if under(mod, "blockfp8.backends"):
        bad = {n for n in ours if under(n, "blockfp8.nn", "blockfp8.formats", "blockfp8.audit", "blockfp8.eval",
                                        "blockfp8.cli")}
        assert not bad, f"{mod} imports {bad}"
        name = mod.rsplit(".", 1)[-1]
        if name in BACKEND_MODULES or any(name.startswith(b + "_") for b in BACKEND_MODULES):
            family = name.split("_")[0] if name != "scaled_mm" else name
            others = {n for n in ours for b in BACKEND_MODULES
                      if b != family and not family.startswith(b)
                      and (n == f"blockfp8.backends.{b}" or n.startswith(f"blockfp8.backends.{b}_"))}
            assert not others, f"backend {mod} imports another backend: {others}"
    if under(mod, "blockfp8.nn"):
        bad = {n for n in ours if under(n, "blockfp8.backends")
               and not under(n, "blockfp8.backends.select", "blockfp8.backends.base", "blockfp8.backends.__init__")}
        assert not bad, f"{mod} must reach kernels only through backends.select, imports {bad}"
    if under(mod, "blockfp8.formats", "blockfp8.audit"):
        bad = {n for n in ours if under(n, "blockfp8.nn")
               or (under(n, "blockfp8.backends")
                   and not under(n, "blockfp8.backends.base", "blockfp8.backends.__init__"))}
        assert not bad, f"{mod} must run on a CPU box without nn or GPU backends, imports {bad}"
        assert not {n for n in found if under(n, "triton", "deep_gemm")}, f"{mod} imports a GPU library"


@pytest.mark.parametrize("mod,path", [(m, p) for m, p in ALL if under(m, "blockfp8.cli")],
                         ids=[m for m, _ in ALL if under(m, "blockfp8.cli")])
def test_cli_imports_heavy_modules_lazily(mod, path):
    top = set(imports(path, top_level_only=True))
    heavy = {n for n in top if n.split(".")[0] not in STDLIB and not under(n, "blockfp8.cli")}
    assert not heavy, f"{mod} imports at module level: {heavy} (import inside run())"
