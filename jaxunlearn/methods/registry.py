"""The method registry: typed, validated, frozen method configs looked up by name.

``get_method({"name": "npo", "beta": 0.2})`` turns the plain ``method`` section of a run
config into that method's config (a :class:`MethodConfig` subclass, registered with
:func:`register`). Values from YAML are coerced to the fields' annotations (ints are
accepted for floats) and checked; every error names ``method.<field>``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

from jaxunlearn.errors import MethodError

__all__ = ["MethodError", "MethodConfig", "register", "get_method", "method_names"]

KINDS = ("gradient", "procedure")



def _coerce(field: str, value: Any, tp: Any) -> Any:
    """Check a hyper-parameter against its annotation; ints are accepted for floats."""
    args = typing.get_args(tp)
    if type(None) in args:
        if value is None:
            return None
        tp = next(a for a in args if a is not type(None))
    ok = {
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        bool: isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp, True)
    if not ok:
        raise MethodError(f"method.{field}: expected {getattr(tp, '__name__', tp)}, got {value!r}")
    if tp is float:
        value = float(value)
        if not math.isfinite(value):
            raise MethodError(f"method.{field}: must be finite, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True, kw_only=True)
class MethodConfig:
    """Base of every method config: typed, frozen, validated on construction.

    ``name`` (the registry key), ``kind`` (``gradient`` or ``procedure``), ``reference``
    (the paper) and ``paper_train`` (the learning rate and epochs its authors used) are
    class constants; the dataclass fields are the hyper-parameters.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    paper_train: ClassVar[Mapping[str, float]] = {}

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        self.validate()

    def validate(self) -> None:
        """Value checks; subclasses extend. Raise :class:`MethodError` naming the field."""

    def _at_least(self, field: str, low: float, *, strict: bool = False) -> None:
        value = getattr(self, field)
        if value < low or (strict and value == low):
            raise MethodError(f"method.{field}: must be {'>' if strict else '>='} {low} for "
                              f"{self.name!r}, got {value!r}")

    def _one_of(self, field: str, choices: tuple[str, ...]) -> None:
        if getattr(self, field) not in choices:
            raise MethodError(f"method.{field}: must be one of {', '.join(choices)} for "
                              f"{self.name!r}, got {getattr(self, field)!r}")

    def check_model(self, model_config: Any) -> None:
        """Checks against the model to unlearn (e.g. RMU's layer exists); default: nothing."""

    def to_dict(self) -> dict:
        return {"name": self.name, **dataclasses.asdict(self)}


_REGISTRY: dict[str, type[MethodConfig]] = {}


def register(cls: type[MethodConfig]) -> type[MethodConfig]:
    """Class decorator adding a method config to the registry under ``cls.name``.

    Use it on a frozen kw_only dataclass subclassing ``GradientMethod`` or
    ``ProcedureMethod`` (``jaxunlearn.methods``).
    """
    if not cls.name or cls.kind not in KINDS:
        raise TypeError(f"{cls.__name__} needs a name and kind 'gradient' or 'procedure'")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise TypeError(f"method {cls.name!r} is already registered by "
                        f"{_REGISTRY[cls.name].__name__}")
    _REGISTRY[cls.name] = cls
    return cls


def method_names() -> tuple[str, ...]:
    """Registered method names, sorted."""
    return tuple(sorted(_REGISTRY))


def get_method(spec: Mapping[str, Any] | str | MethodConfig) -> MethodConfig:
    """The typed config for ``spec`` (``{"name": ..., hyper-parameters...}`` or a bare name).

    Raises:
      MethodError: unknown name (listing the known ones), unknown hyper-parameter
        (naming it), or a value of the wrong type or range (naming ``method.<field>``).
    """
    if isinstance(spec, MethodConfig):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        raise MethodError(f"method: expected a mapping with a 'name', got {spec!r}")
    params = dict(spec)
    name = params.pop("name", None)
    if not isinstance(name, str) or not name:
        raise MethodError(f"method.name: missing; choose one of {', '.join(method_names())}")
    if name not in _REGISTRY:
        raise MethodError(f"method.name: unknown method {name!r}; known: "
                          f"{', '.join(method_names())}")
    cls = _REGISTRY[name]
    known = [f.name for f in dataclasses.fields(cls)]
    for key in params:
        if key not in known:
            raise MethodError(f"method.{key}: unknown hyper-parameter for {name!r} "
                              f"(known: {', '.join(sorted(known))})")
    return cls(**params)
