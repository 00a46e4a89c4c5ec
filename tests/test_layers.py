"""The package's layers, read from the source with ast (nothing is imported):

    cli -> report, bench, analysis -> engine -> kernels

report, bench and analysis never import each other; engine imports none of them; kernels import
only kernels. `microbench/stats.py` and `microbench/__init__.py` are leaves: anyone may import
them, and they import nothing from the package. No module imports another's `_private` name
(a package's own private modules, such as kernels' `_utils`, are shared within that package),
and no imports form a cycle. Imports inside functions count too: a deferred import is still
an edge.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LEAVES = {"microbench", "microbench.stats"}
# who may import whom, by layer (a layer may always import itself and the leaves)
ALLOWED = {
    "cli": {"report", "bench", "analysis", "engine", "kernels"},
    "report": {"engine", "kernels"},
    "bench": {"engine", "kernels"},
    "analysis": {"engine", "kernels"},
    "engine": {"kernels"},
    "kernels": set(),
}


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for microbench/ and kernels/ (installed as microbench.kernels)."""
    out = {}
    for base, prefix in ((ROOT / "microbench", ("microbench",)),
                         (ROOT / "kernels", ("microbench", "kernels"))):
        for path in sorted(base.rglob("*.py")):
            parts = path.relative_to(base).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(prefix + parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def layer(name: str) -> str:
    if name in LEAVES:
        return "leaf"
    parts = name.split(".")
    if parts[1].startswith("cli"):          # cli.py and the CLI's own helper modules
        return "cli"
    return parts[1]


def _package_of(name: str) -> str:
    return name if _is_package(name) else name.rsplit(".", 1)[0]


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = _package_of(importer).split(".")
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(name: str):
    """(target module, imported name or None, line) for every import of a package module."""
    tree = ast.parse(MODULES[name].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in MODULES:
                    yield a.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve(name, node)
            if mod not in MODULES:
                continue
            for a in node.names:
                sub = f"{mod}.{a.name}"
                if sub in MODULES:           # `from pkg import module`
                    yield sub, None, node.lineno
                    if a.name.startswith("_") and _package_of(name) != mod:
                        yield mod, a.name, node.lineno
                else:
                    yield mod, a.name, node.lineno


def _private(n: str | None) -> bool:
    return bool(n) and n.startswith("_") and not n.startswith("__")


def _module_aliases(name: str) -> dict[str, str]:
    """Local names bound to package modules by this module's imports."""
    out = {}
    tree = ast.parse(MODULES[name].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in MODULES and a.asname:
                    out[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve(name, node)
            for a in node.names:
                if f"{mod}.{a.name}" in MODULES:
                    out[a.asname or a.name] = f"{mod}.{a.name}"
    return out


def layer_violations() -> list[str]:
    bad = []
    for name in MODULES:
        mine = layer(name)
        for target, _, line in imports(name):
            theirs = layer(target)
            if theirs == mine or theirs == "leaf" and mine != "leaf":
                continue
            if theirs not in ALLOWED.get(mine, set()):
                bad.append(f"{name}:{line} ({mine}) imports {target} ({theirs})")
    return sorted(set(bad))


def private_violations() -> list[str]:
    bad = []
    for name in MODULES:
        for target, imported, line in imports(name):
            if _private(imported) and target != name and \
                    _package_of(target) != _package_of(name):
                bad.append(f"{name}:{line} imports {target}.{imported}")
        aliases = _module_aliases(name)
        for node in ast.walk(ast.parse(MODULES[name].read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in aliases and _private(node.attr):
                target = aliases[node.value.id]
                if _package_of(target) != _package_of(name):
                    bad.append(f"{name}:{node.lineno} uses {target}.{node.attr}")
    return sorted(set(bad))


def cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph = {n: sorted({t for t, _, _ in imports(n) if t != n}) for n in MODULES}
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    assert {layer(n) for n in MODULES} <= set(ALLOWED) | {"leaf"}, \
        sorted(n for n in MODULES if layer(n) not in set(ALLOWED) | {"leaf"})


def test_imports_point_one_way():
    assert layer_violations() == []


def test_leaves_import_nothing_from_the_package():
    assert [f"{n} imports {t}" for n in LEAVES for t, _, _ in imports(n)] == []


def test_no_private_names_across_modules():
    assert private_violations() == []


def test_no_import_cycles():
    assert cycles() == []


# ---- the checker itself, on the rules' own cases --------------------------------------------
@pytest.mark.parametrize("name, want", [
    ("microbench.cli", "cli"), ("microbench.stats", "leaf"), ("microbench", "leaf"),
    ("microbench.engine.plan", "engine"), ("microbench.kernels.gemv", "kernels"),
    ("microbench.report", "report")])
def test_layers_by_name(name, want):
    assert layer(name) == want


def test_relative_imports_resolve_inside_kernels():
    targets = {t for t, _, _ in imports("microbench.kernels.gemv")}
    assert "microbench.kernels._utils" in targets
