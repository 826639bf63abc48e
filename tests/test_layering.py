"""The import layering of STYLE.md, checked on the source (every import, also those inside functions)."""

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "blockfp8"
STDLIB = set(sys.stdlib_module_names) | {"__future__"}
BACKEND_MODULES = {"deepgemm", "scaled_mm", "triton", "reference"}
MAX_LINES = 400


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


ADAPTERS = {f"blockfp8.backends.{b}" for b in BACKEND_MODULES}
ABOVE_KERNELS = ("blockfp8.backends", "blockfp8.nn", "blockfp8.formats", "blockfp8.audit", "blockfp8.eval",
                 "blockfp8.bench", "blockfp8.cli", "blockfp8.testing")


@pytest.mark.parametrize("mod,path", ALL, ids=[m for m, _ in ALL])
def test_layering(mod, path):
    found = set(imports(path))
    ours = {n for n in found if under(n, "blockfp8")}
    if mod in ("blockfp8.envs", "blockfp8.log", "blockfp8.atomic", "blockfp8.paths", "blockfp8.datasets"):
        third_party = {n.split(".")[0] for n in found} - STDLIB - {"blockfp8"}
        assert not third_party, f"{mod} must use the stdlib only, imports {third_party}"
        allowed = {"blockfp8", "blockfp8.envs", "blockfp8.paths", "blockfp8.paths.quote"}
        assert ours <= allowed, f"{mod} imports {ours}"
    if under(mod, "blockfp8.quant", "blockfp8.platform", "blockfp8.config"):
        bad = {n for n in ours if under(n, "blockfp8.kernels", *ABOVE_KERNELS)}
        assert not bad, f"{mod} (layer 2) imports higher layers: {bad}"
    if under(mod, "blockfp8.kernels"):
        bad = {n for n in ours if not under(n, "blockfp8.kernels", "blockfp8.quant", "blockfp8.platform")
               and n != "blockfp8"}
        assert not bad, f"kernel module {mod} may import only quant and platform, imports {bad}"
    if under(mod, "blockfp8.backends"):
        bad = {n for n in ours if under(n, "blockfp8.nn", "blockfp8.formats", "blockfp8.audit", "blockfp8.eval",
                                        "blockfp8.bench", "blockfp8.cli", "blockfp8.testing")}
        assert not bad, f"{mod} imports {bad}"
        if mod in ADAPTERS:
            others = {n for n in ours if any(under(n, a) for a in ADAPTERS - {mod})}
            assert not others, f"adapter {mod} imports another adapter: {others}"
    if under(mod, "blockfp8.nn"):
        bad = {n for n in ours if under(n, "blockfp8.backends", "blockfp8.kernels")
               and not under(n, "blockfp8.backends.select", "blockfp8.backends.base", "blockfp8.backends.__init__")}
        assert not bad, f"{mod} must reach kernels only through backends.select / backends.base, imports {bad}"
    if under(mod, "blockfp8.formats", "blockfp8.audit"):
        bad = {n for n in ours if under(n, "blockfp8.nn", "blockfp8.kernels", "blockfp8.eval", "blockfp8.bench")
               or (under(n, "blockfp8.backends")
                   and not under(n, "blockfp8.backends.base", "blockfp8.backends.__init__"))}
        assert not bad, f"{mod} must run on a CPU box without nn, kernels, eval or GPU backends, imports {bad}"
        assert not {n for n in found if under(n, "triton", "deep_gemm")}, f"{mod} imports a GPU library"
    if under(mod, "blockfp8.eval"):
        bad = {n for n in ours if under(n, "blockfp8.audit", "blockfp8.bench", "blockfp8.cli")}
        assert not bad, f"{mod}: eval and audit stand side by side, imports {bad}"


@pytest.mark.parametrize("mod,path", ALL, ids=[m for m, _ in ALL])
def test_modules_stay_small(mod, path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{mod} has {lines} lines (> {MAX_LINES}): split it by what its parts do"


def test_every_package_has_a_mirrored_test_folder():
    tests = Path(__file__).resolve().parent
    packages = sorted(p.parent.name for p in SRC.glob("*/__init__.py"))
    missing = [p for p in packages if not (tests / p / "__init__.py").is_file()
               or not any((tests / p).glob("test_*.py"))]
    assert not missing, f"packages without tests/<package>/test_*.py: {missing}"


@pytest.mark.parametrize("mod,path", [(m, p) for m, p in ALL if under(m, "blockfp8.cli")],
                         ids=[m for m, _ in ALL if under(m, "blockfp8.cli")])
def test_cli_imports_heavy_modules_lazily(mod, path):
    top = set(imports(path, top_level_only=True))
    heavy = {n for n in top if n.split(".")[0] not in STDLIB and not under(n, "blockfp8.cli")}
    assert not heavy, f"{mod} imports at module level: {heavy} (import inside run())"
