"""YAML read strictly: no duplicate keys, no exploding aliases, ``3e-3`` is a number.

PyYAML, as configured everywhere, keeps the last of two equal keys without a word
(``steps: 1`` then ``steps: 500`` ran 500 updates), and expands aliases lazily into
shared objects, so a 413-byte "billion laughs" document became gigabytes only when the
config was copied, long after parsing. Here both are refused at parse time with one
line naming the file, the key and the line (:class:`YAMLInputError`, a
:class:`~jaxunlearn.errors.UserError`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from jaxunlearn.errors import YAMLInputError

__all__ = ["YAMLInputError", "MAX_VALUES", "load", "read_file", "check_expansion"]

# A document may expand (through aliases) to at most this many values; real configs
# hold a few hundred.
MAX_VALUES = 100_000



class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key, mark):
        super().__init__(f"line {mark.line + 1}: duplicate key {key!r} (a later value would "
                         "silently replace the earlier one)")


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys and reads ``3e-3`` as a float.

    Duplicates are looked for among a mapping's own keys before ``<<:`` merges are
    flattened into it, so explicit keys may still override merged ones. PyYAML follows
    YAML 1.1, whose floats need a dot (``3.0e-3``); ``3e-3`` stayed a string and failed
    as "expected a number". YAML 1.2 and every user read it as 0.003.
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        raise _DuplicateKey(key, key_node.start_mark)
                    seen.add(key)
                except TypeError:  # unhashable: the base class says so
                    pass
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _expanded_size(value: Any, memo: dict[int, int], active: set[int], where: str) -> int:
    """Values in ``value`` with every alias expanded (a shared node counts once per use)."""
    if not isinstance(value, (dict, list)):
        return 1
    key = id(value)
    if key in active:
        raise YAMLInputError(f"{where}: a YAML alias refers to itself (recursive structure)")
    if key not in memo:
        active.add(key)
        items = value.values() if isinstance(value, dict) else value
        memo[key] = 1 + sum(_expanded_size(v, memo, active, where) for v in items)
        active.discard(key)
    return memo[key]


def check_expansion(value: Any, where: str) -> None:
    """Refuses ``value`` if it expands to more than ``MAX_VALUES`` values, naming the
    deepest key that does (e.g. ``'eval.metrics'``), or if it contains itself."""
    memo: dict[int, int] = {}
    total = _expanded_size(value, memo, set(), where)
    if total <= MAX_VALUES:
        return
    path, node = [], value
    while isinstance(node, dict):
        big = [(k, v) for k, v in node.items()
               if _expanded_size(v, memo, set(), where) > MAX_VALUES]
        if not big:
            break
        path.append(str(big[0][0]))
        node = big[0][1]
    at = f"'{'.'.join(path)}' " if path else ""
    raise YAMLInputError(f"{where}: {at}expands to {memo.get(id(node), total)} values "
                         f"through YAML aliases (at most {MAX_VALUES})")


def load(text: str, where: str = "config") -> Any:
    """Parses YAML ``text``.

    Raises:
      YAMLInputError: duplicate keys, recursive or exploding aliases, too deep nesting.
      yaml.YAMLError: any other syntax error (the caller decides what it means).
    """
    try:
        value = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except _DuplicateKey as e:
        raise YAMLInputError(f"{where}: {e}") from None
    except RecursionError:
        raise YAMLInputError(f"{where}: nested too deeply") from None
    check_expansion(value, where)
    return value


def read_file(path: str | Path) -> Any:
    """The parsed YAML file ``path``; every problem is a ``YAMLInputError`` naming it:
    missing, a directory, not UTF-8, malformed, duplicate keys, exploding aliases."""
    p = Path(path)
    if not p.exists():
        raise YAMLInputError(f"{p}: config file does not exist")
    if not p.is_file():
        raise YAMLInputError(f"{p}: is a directory, not a YAML file" if p.is_dir()
                             else f"{p}: not a regular file")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise YAMLInputError(f"{p}: not UTF-8 text (bad byte at offset {e.start})") from None
    except OSError as e:
        raise YAMLInputError(f"{p}: cannot read ({e.strerror})") from None
    try:
        return load(text, str(p))
    except yaml.YAMLError as e:
        raise YAMLInputError(f"{p}: malformed YAML ({str(e).splitlines()[0]})") from None
