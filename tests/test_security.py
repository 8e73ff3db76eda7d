"""Security: only safetensors, GGUF and orbax are ever loaded; files cannot escape.

* Nothing is unpickled and no remote code runs: a model directory with only a
  (booby-trapped) ``pytorch_model.bin`` is refused with a clear message and the pickle
  never runs; a tokenizer that asks for its own Python code does not get it; and the
  package source never calls ``pickle.load``/``torch.load``, ``np.load(allow_pickle=True)``
  or passes ``trust_remote_code=True`` (an AST scan, checked on planted offenders).
* GGUF headers are validated against the file size before any tensor byte is read: an
  offset past the end, a tensor larger than the file, overlapping tensors, absurd counts
  and string lengths fail with ``GGUFError`` before ``np.memmap`` is ever called.
* Names that become path components (split names, method names, shard names read from
  an index file) cannot contain ``/`` or ``..``: ``validate.path_component`` and
  ``validate.inside`` and the places that use them.
"""

from __future__ import annotations

import ast
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from jaxunlearn import validate
from jaxunlearn.errors import ValidationError

PACKAGE = Path(__file__).resolve().parents[1] / "jaxunlearn"


# ------------------------------------------------------------------------------ no pickle


class _Trap:
    """Unpickling this creates ``path``: proof that something unpickled the file."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def tiny_hf_dir(tmp_path) -> Path:
    from flax import nnx

    from jaxunlearn.models import Llama, save_pretrained
    from jaxunlearn.models.presets import tiny

    config = tiny(vocab_size=64)
    return save_pretrained(Llama(config, rngs=nnx.Rngs(0)), config, tmp_path / "model")


@pytest.fixture
def no_unpickling(monkeypatch):
    """Makes every pickle entry point (and torch.load) fail loudly if anything calls it."""
    import torch

    def boom(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    for mod, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"),
                      (torch, "load")):
        monkeypatch.setattr(mod, name, boom)


def test_directory_with_only_pytorch_model_bin_is_refused(tmp_path, tiny_hf_dir, no_unpickling):
    from jaxunlearn.models import load_pretrained
    from jaxunlearn.errors import CheckpointError

    marker = tmp_path / "unpickled"
    (tiny_hf_dir / "model.safetensors").unlink()
    (tiny_hf_dir / "pytorch_model.bin").write_bytes(pickle.dumps(_Trap(marker)))
    with pytest.raises(CheckpointError, match=r"no \*\.safetensors.*pickled \.bin checkpoints "
                                              r"are refused"):
        load_pretrained(tiny_hf_dir)
    assert not marker.exists()


def test_trap_really_fires_when_unpickled(tmp_path):
    """The check above is meaningful: unpickling the trap does create the marker."""
    marker = tmp_path / "unpickled"
    pickle.loads(pickle.dumps(_Trap(marker)))
    assert marker.exists()


def test_tokenizer_asking_for_remote_code_does_not_run_it(tmp_path, tiny_hf_dir):
    """A tokenizer_config/config.json whose ``auto_map`` points at a Python file in the
    directory: ``load_tokenizer`` either ignores it or refuses, but never imports it."""
    from jaxunlearn.data.tokenizer import train_tokenizer
    from jaxunlearn.models import load_tokenizer
    from jaxunlearn.errors import CheckpointError

    marker = tmp_path / "remote_code_ran"
    train_tokenizer(["alpha beta gamma"] * 8, vocab_size=300).save_pretrained(str(tiny_hf_dir))
    (tiny_hf_dir / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import PreTrainedTokenizerFast\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n"
        "from transformers import LlamaConfig\n"
        "class EvilConfig(LlamaConfig):\n    model_type = 'evil'\n")
    for name, extra in (("tokenizer_config.json", {"tokenizer_class": "EvilTokenizer",
                                                   "auto_map": {"AutoTokenizer":
                                                                [None, "evil.EvilTokenizer"]}}),
                        ("config.json", {"model_type": "evil",
                                         "auto_map": {"AutoConfig": "evil.EvilConfig"}})):
        path = tiny_hf_dir / name
        path.write_text(json.dumps({**json.loads(path.read_text()), **extra}))
    try:
        load_tokenizer(tiny_hf_dir)
    except CheckpointError as e:
        assert str(tiny_hf_dir) in str(e)
    assert not marker.exists(), "the directory's Python code was imported"


# --------------------------------------------------------------- the source never unpickles

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


# ------------------------------------------------------------------------------ GGUF bounds

_U32, _U64, _STR = 4, 10, 8  # GGUF metadata value types
_F32 = 0  # ggml type id


def _gguf(tensors: list[tuple[str, list[int], int, int]], *, data: int = 0,
          kv: list[bytes] = (), n_tensors: int | None = None) -> bytes:
    """A GGUF v3 file: header, ``kv`` entries, tensor infos (name, dims, type, offset),
    padding to 32 bytes, then ``data`` zero bytes."""
    def string(s: str) -> bytes:
        b = s.encode()
        return struct.pack("<Q", len(b)) + b

    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors) if n_tensors is None else n_tensors,
                                len(kv))
    out += b"".join(kv)
    for name, dims, ggml_type, offset in tensors:
        out += string(name) + struct.pack("<I", len(dims))
        out += struct.pack(f"<{len(dims)}Q", *dims) + struct.pack("<IQ", ggml_type, offset)
    out += bytes(-len(out) % 32)
    return out + bytes(data)


def _kv_string(key: str, value: str) -> bytes:
    k, v = key.encode(), value.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", _STR) + struct.pack("<Q", len(v)) + v


@pytest.fixture
def no_memmap(monkeypatch):
    """No tensor byte may be read (np.memmap is how read_gguf reads them)."""
    def boom(*args, **kwargs):
        raise AssertionError("tensor data was mapped before the header was validated")

    monkeypatch.setattr(np, "memmap", boom)


@pytest.mark.parametrize("blob, message", [
    # 64 x 64 float32 = 16 KiB claimed, 1 KiB present.
    (_gguf([("token_embd.weight", [64, 64], _F32, 0)], data=1024), "outside the"),
    # in range in size, but the offset points past the end.
    (_gguf([("token_embd.weight", [8], _F32, 1 << 20)], data=64), "outside the"),
    # a tensor of 2^62 elements: must fail on the size check, not allocate.
    (_gguf([("token_embd.weight", [1 << 31, 1 << 31], _F32, 0)], data=64), "outside the"),
    # two tensors sharing bytes.
    (_gguf([("a.weight", [16], _F32, 0), ("b.weight", [16], _F32, 32)], data=128), "overlap"),
    # unaligned offset.
    (_gguf([("token_embd.weight", [4], _F32, 4)], data=64), "aligned"),
    # a billion tensors announced in a tiny file.
    (_gguf([], n_tensors=10 ** 9), "too many"),
    # a metadata string claiming 1 TiB.
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 40) + b"key", "past the end"),
    # unknown ggml type id.
    (_gguf([("token_embd.weight", [32], 999, 0)], data=128), "unknown ggml type"),
    # a 5-dimensional tensor.
    (_gguf([("token_embd.weight", [1, 1, 1, 1, 1], _F32, 0)], data=64), "dimensions"),
    (b"GGUF" + struct.pack("<I", 3) + b"\x01\x00", "past the end"),
], ids=["larger-than-file", "offset-past-end", "huge-dims", "overlap", "unaligned",
        "tensor-count", "string-length", "unknown-type", "rank-5", "cut-header"])
def test_gguf_header_is_checked_against_the_file_size(tmp_path, no_memmap, blob, message):
    from jaxunlearn.models.gguf import GGUFError, read_gguf

    path = tmp_path / "bad.gguf"
    path.write_bytes(blob)
    with pytest.raises(GGUFError, match=message) as err:
        read_gguf(path)
    assert str(path) in str(err.value)


def test_gguf_fixture_builder_makes_readable_headers(tmp_path):
    """The hand-built headers above are valid GGUF but for the planted fault: the
    ``gguf`` package's own reader parses a correct one."""
    import gguf

    path = tmp_path / "ok.gguf"
    path.write_bytes(_gguf([("token_embd.weight", [8, 2], _F32, 0)], data=64,
                           kv=[_kv_string("general.architecture", "llama")]))
    reader = gguf.GGUFReader(str(path))
    (t,) = reader.tensors
    assert t.name == "token_embd.weight" and list(t.shape) == [8, 2]
    assert str(reader.fields["general.architecture"].contents()) == "llama"


# ------------------------------------------------------------------------------ path escapes


@pytest.mark.parametrize("name", ["npo", "forget10", "target-0123abcd", "retain_99", "näme",
                                  "a.b", "x" * 255])
def test_path_component_accepts_plain_names(name):
    assert validate.path_component(name, "method.name") == name


@pytest.mark.parametrize("name, why", [
    ("..", "must not start with '.'"), ("../x", "plain name"), ("a/b", "plain name"),
    ("/etc", "plain name"), ("a\\b", "plain name"), ("", "empty"), (".hidden", "start with"),
    ("x\x00y", "plain name"), ("line\nbreak", "plain name"), (" npo", "whitespace"),
    ("y" * 256, "longer than 255"), (3, "expected a name"), (None, "expected a name")])
def test_path_component_refuses_escapes(name, why):
    with pytest.raises(ValidationError, match=why) as err:
        validate.path_component(name, "data.forget")
    assert str(err.value).startswith("data.forget: ")


def test_inside_keeps_paths_under_the_root_even_through_symlinks(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    assert validate.inside(root, "npo", field="method.name") == root / "npo"
    assert validate.inside(tmp_path / "not_yet", "a", field="x") == tmp_path / "not_yet" / "a"
    with pytest.raises(ValidationError, match="method.name"):
        validate.inside(root, "..", field="method.name")
    (root / "link").symlink_to(tmp_path.parent)
    with pytest.raises(ValidationError, match="outside"):
        validate.inside(root, "link", field="method.name")


@pytest.mark.parametrize("field, value", [("forget", "../../etc/passwd"), ("retain", "a/b"),
                                          ("forget", ".."), ("retain", "/abs")])
def test_config_refuses_split_names_that_are_paths(field, value):
    from jaxunlearn.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=f"data.{field}"):
        load_config(None, [f"data.{field}={value}"])
    assert load_config(None, [f"data.{field}=forget05"]).data.forget  # plain names pass


def test_every_registered_method_name_is_a_plain_component():
    """``unlearn`` writes to ``<output_dir>/<method name>``: names come from the registry."""
    from jaxunlearn import methods

    names = methods.method_names()
    assert "npo" in names
    for name in names:
        validate.path_component(name, "method.name")
    with pytest.raises(methods.MethodError, match="unknown method"):
        methods.get_method({"name": "../npo"})


def test_safetensors_index_cannot_point_outside_the_model(tmp_path, tiny_hf_dir):
    from jaxunlearn.models import load_pretrained
    from jaxunlearn.errors import CheckpointError

    outside = tmp_path / "outside.safetensors"
    (tiny_hf_dir / "model.safetensors").rename(outside)
    from safetensors import safe_open

    with safe_open(str(outside), framework="numpy") as f:
        keys = list(f.keys())
    (tiny_hf_dir / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: "../outside.safetensors" for k in keys}}))
    with pytest.raises(CheckpointError, match="weight_map shard.*plain name"):
        load_pretrained(tiny_hf_dir)


def test_split_loader_refuses_paths(tmp_path):
    from jaxunlearn.data.tofu import DataError, load_split

    (tmp_path / "bench").mkdir()
    (tmp_path / "secret.json").write_text('{"question": "q?", "answer": "a"}\n')
    with pytest.raises(DataError, match="plain split name"):
        load_split(tmp_path / "bench", "../secret")
