"""Security across the package: the source never unpickles or trusts remote code.

An AST scan of every module for ``pickle.load``/``torch.load``, ``np.load(allow_pickle=
True)`` and ``trust_remote_code=True``, itself checked on planted offenders. What each
loader refuses is tested beside it: ``test_io.py`` (pickled checkpoints, remote-code
tokenizers, shard names), ``test_gguf.py`` (header bounds), ``test_validate.py`` (names
that become paths).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "jaxunlearn"


_UNPICKLERS = {("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"),
               ("cPickle", "load"), ("dill", "load"), ("dill", "loads"), ("joblib", "load"),
               ("torch", "load"), ("pd", "read_pickle"), ("pandas", "read_pickle")}


def forbidden_calls(source: str, filename: str = "<src>") -> list[str]:
    """``file:line what`` for each unpickling call or truthy ``trust_remote_code`` /
    ``allow_pickle`` keyword in ``source`` (any value but a literal False counts)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "dill", "joblib"):
            found.append(f"{filename}:{node.lineno} from {node.module} import ...")
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and \
                (f.value.id, f.attr) in _UNPICKLERS:
            found.append(f"{filename}:{node.lineno} {f.value.id}.{f.attr}(...)")
        for kw in node.keywords:
            if kw.arg in ("trust_remote_code", "allow_pickle") and not (
                    isinstance(kw.value, ast.Constant) and kw.value.value is False):
                found.append(f"{filename}:{node.lineno} {kw.arg}={ast.unparse(kw.value)}")
    return found


def test_forbidden_call_scanner_finds_planted_offenders():
    planted = ("import pickle, torch\nimport numpy as np\n"
               "a = pickle.load(open('f', 'rb'))\n"
               "b = torch.load('w.pt')\n"
               "c = AutoModel.from_pretrained(p, trust_remote_code=True)\n"
               "d = np.load('x.npy', allow_pickle=flag)\n"
               "from pickle import loads\n"
               "ok = AutoTokenizer.from_pretrained(p, trust_remote_code=False)\n")
    found = {f.split(" ", 1)[1] for f in forbidden_calls(planted)}
    assert found == {"from pickle import ...", "pickle.load(...)", "torch.load(...)",
                     "trust_remote_code=True", "allow_pickle=flag"}


def test_package_source_never_unpickles_or_trusts_remote_code():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20  # the whole package, not an empty glob
    found = [hit for f in files for hit in forbidden_calls(f.read_text(), str(f))]
    assert found == []
