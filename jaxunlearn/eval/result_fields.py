"""The fields of a ``models.<name>`` entry of eval.json, as the typed results
(``eval.results``, ``eval.tofu_results``, ``eval.canary_results``) read and write them:
numbers or null, objects, and entries left out when undefined. A mistyped field raises
UserError naming ``where`` and the field.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

from jaxunlearn.errors import UserError

__all__ = ["Number", "number_field", "present", "object_field"]

Number = float | None


def number_field(d: Mapping, key: str, where: str) -> Number:
    """``d[key]`` as a float; None when absent or null."""
    value = d.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UserError(f"{where}: field '{key}': expected a number or null, got {value!r:.40}")
    return float(value)


def present(items) -> dict:
    """The ``(key, value)`` pairs whose value is not None (keys absent when undefined)."""
    return {k: v for k, v in items if v is not None}


def object_field(d: Mapping, key: str, where: str) -> Mapping:
    """``d[key]``, an object; empty when absent or null."""
    value = d.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise UserError(f"{where}: field '{key}': expected an object")
    return value
