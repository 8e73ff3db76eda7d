"""The package's import structure: no import cycles, no function-local imports of
jaxunlearn modules (the old way of hiding cycles), and layers that import downwards.

Both checks parse the source with ``ast`` (nothing is imported), so they see every
import, including those in functions that no test calls.
"""

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "jaxunlearn"

# Function-local imports of heavy optional extras are allowed (DESIGN.md); these are
# third-party, so the check below, which only looks at jaxunlearn imports, never sees
# them. Modules allowed a function-local jaxunlearn import, and why (none today: keep it so).
LOCAL_IMPORT_ALLOWLIST: dict[str, str] = {}
# Layers, bottom first (DESIGN.md); a module may import its own layer and those below.
LAYERS = (
    ("jaxunlearn.errors", "jaxunlearn.losses", "jaxunlearn.ops", "jaxunlearn.solvers",
     "jaxunlearn.secondorder", "jaxunlearn.validate", "jaxunlearn.data.schema",
     "jaxunlearn.interrupts", "jaxunlearn.resources", "jaxunlearn.strict_yaml",
     "jaxunlearn.storage"),
    ("jaxunlearn.models",),
    ("jaxunlearn.data",),
    ("jaxunlearn.train", "jaxunlearn.config", "jaxunlearn.eval", "jaxunlearn.methods"),
    ("jaxunlearn.report",),
    ("jaxunlearn.pipeline",),
    ("jaxunlearn.cli",),
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(node: ast.AST, module: str) -> list[tuple[ast.AST, str]]:
    """``(node, imported jaxunlearn module)`` for every import statement under ``node``;
    ``from a import b`` names ``a.b`` when that is a module, else ``a``."""
    out = []
    for n in ast.walk(node):
        if isinstance(n, ast.Import):
            out += [(n, a.name) for a in n.names if a.name.split(".")[0] == "jaxunlearn"]
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:  # relative import
                base = ".".join(module.split(".")[:-n.level] + ([base] if base else []))
            if base.split(".")[0] != "jaxunlearn":
                continue
            for a in n.names:
                out.append((n, f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base))
    return out


@functools.cache
def _top_level_graph() -> dict[str, frozenset[str]]:
    graph = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        graph[name] = frozenset(t for _, t in _imports(tree, name) if t != name)
    return graph


def test_the_parser_sees_imports_and_the_allowlist_is_current():
    assert set(LOCAL_IMPORT_ALLOWLIST) <= set(MODULES), "allowlisted modules that are gone"
    graph = _top_level_graph()
    assert "jaxunlearn.errors" in graph["jaxunlearn.config"]
    assert "jaxunlearn.pipeline.evaluation" in graph["jaxunlearn.pipeline.evaluate"]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_function_local_jaxunlearn_imports(name):
    tree = ast.parse(MODULES[name].read_text(), str(MODULES[name]))
    local = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            local += [f"line {n.lineno}: {target}" for n, target in _imports(fn, name)]
    if name in LOCAL_IMPORT_ALLOWLIST:
        assert local, f"{name} no longer needs its allowlist entry: remove it"
    else:
        assert not local, f"{name} imports jaxunlearn inside a function: {local}"


def test_import_graph_is_acyclic():
    graph = _top_level_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def _layer(name: str) -> int | None:
    best = None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (i, len(p))
    return None if best is None else best[0]


@pytest.mark.parametrize("name", [n for n in sorted(MODULES) if _layer(n) is not None])
def test_imports_point_down_the_layers(name):
    up = [t for t in _top_level_graph()[name]
          if _layer(t) is not None and _layer(t) > _layer(name)]
    assert not up, f"{name} (layer {_layer(name)}) imports a higher layer: {sorted(up)}"
