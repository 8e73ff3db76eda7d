"""The import graph: no cycles among jaxunlearn's modules, and no function-local
``jaxunlearn`` imports in the modules that do the mathematics (they would hide a cycle).

Modules with function-local imports of optional heavy extras (torch, matplotlib, ...)
are fine; a function-local ``from jaxunlearn...`` is not. The orchestration modules
(``train/loop.py``'s provisioning, ``eval/suite.py``, ``cli.py``, ``demo.py``, ...) are
being moved to ``pipeline/`` and are not checked here yet.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "jaxunlearn"

# Modules that must not import jaxunlearn inside a function.
NO_LOCAL_IMPORTS = ["losses", "models/outputs.py", "methods", "train/step.py", "train/nll.py",
                    "train/finetune.py", "data/forget_retain.py", "data/batch.py",
                    "eval/scoring.py", "eval/mia.py", "unlearn.py"]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _files(entry: str) -> list[Path]:
    path = ROOT / entry
    return sorted(path.rglob("*.py")) if path.is_dir() else [path]


def _imports(path: Path, *, top_level_only: bool) -> list[tuple[str, int]]:
    """``(jaxunlearn module, line)`` imported by ``path`` (at module level, or anywhere)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = []
    package = _module_name(path).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith("jaxunlearn")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            if base.startswith("jaxunlearn"):
                # "from jaxunlearn.x import y" may import the submodule x.y.
                out += [(f"{base}.{a.name}", node.lineno) for a in node.names]
                out.append((base, node.lineno))
    return out


@pytest.mark.parametrize("entry", NO_LOCAL_IMPORTS)
def test_no_function_local_jaxunlearn_imports(entry):
    for path in _files(entry):
        top = {line for _, line in _imports(path, top_level_only=True)}
        local = [(m, line) for m, line in _imports(path, top_level_only=False) if line not in top]
        assert not local, f"{path.relative_to(ROOT.parent)}: function-local imports {local}"


def test_no_import_cycles_at_module_level():
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for target, _ in _imports(path, top_level_only=True):
            while target and target not in modules:  # "pkg.mod.attr" -> "pkg.mod"
                target = target.rpartition(".")[0]
            if target and target != name:
                deps.add(target)
        graph[name] = deps
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            # A package's __init__ importing its own submodules is not a cycle back to it.
            if node.startswith(dep + ".") and dep in modules and \
                    modules[dep].name == "__init__.py":
                continue
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(dep):]
                                                                    + [dep]))
            if state.get(dep) is None:
                visit(dep)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
