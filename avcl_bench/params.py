"""Typed configuration parameters.

A :class:`Param` declares one configuration key: its type, default, allowed values or range and
the one-line source of its default. The shared sections of the run configuration declare theirs in
:data:`avcl_bench.config.SCHEMA`; each strategy declares its own hyperparameters in the ``params:``
section of its document (``strategies/<name>.yaml``), read by :func:`declared_params`::

    params:
      depth: {type: int, default: 3, min: 1, source: "CIGN Sec. 4.1: depth of the transformers is 3"}
      cg_negatives: {type: str, default: classes, choices: [classes, batch], source: "..."}

Types: ``int``, ``float``, ``bool``, ``str``; ``list`` (``items:`` the element's declaration) and
``map`` (``keys:`` the allowed keys, ``values:`` the value's declaration). Constraints:
``nullable: true`` (null allowed), ``choices``, ``min`` / ``max`` (inclusive), ``exclusive_min`` /
``exclusive_max``. ``variants:`` (scalar types) names the values that change a strategy's method away
from its paper (or the official release its protocol follows): ``{bce: "+ old-class BCE"}``; a run
whose value differs from the method's own (:func:`avcl_bench.config.method_variant`) carries that
name in every output. :meth:`Param.coerce` turns a value of any configuration layer into the declared
type (YAML reads ``1e-4`` as a string, so strings are parsed for numbers and booleans) or raises
a one-line :class:`ConfigError` naming the key and what it accepts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

SCALAR_TYPES = ("int", "float", "bool", "str")
TYPES = SCALAR_TYPES + ("list", "map")
#: the keys a declaration in a ``params:`` section may carry
DECLARATION_KEYS = (
    "type",
    "default",
    "nullable",
    "choices",
    "min",
    "max",
    "exclusive_min",
    "exclusive_max",
    "items",
    "keys",
    "values",
    "variants",
    "source",
)
_NO_DEFAULT = object()


class InvalidValue(ValueError):
    """A value outside its declaration ``spec``; ``at`` locates it inside a list or map value
    (``.audio``, ``[1]``); the caller names the key and the layer (:func:`invalid_message`)."""

    def __init__(self, spec: Param, value: Any, at: str = "", unknown_key: bool = False):
        super().__init__(spec.describe())
        self.spec, self.value, self.at, self.unknown_key = spec, value, at, unknown_key


@dataclass(frozen=True)
class Param:
    type: str
    default: Any = None
    nullable: bool = False
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    exclusive_min: float | None = None
    exclusive_max: float | None = None
    items: Param | None = None  # list: the elements' declaration
    keys: tuple | None = None  # map: the allowed keys (None = any)
    values: Param | None = None  # map: the values' declaration
    source: str = ""
    #: (value, name) pairs: values that make the run a named variant of the method (scalar types)
    variants: tuple | None = None

    def variant_name(self, value: Any) -> str | None:
        """The declared name of ``value`` as a variant of the method (None: not declared)."""
        return dict(self.variants or ()).get(value)

    # ---- description -------------------------------------------------------------------------
    def describe(self) -> str:
        """What the parameter accepts, e.g. ``a finite number > 0`` or ``one of classes, batch``."""
        if self.choices is not None:
            text = "one of " + ", ".join(str(c) for c in self.choices)
        elif self.type == "list":
            text = f"a list of ({self.items.describe()})"
        elif self.type == "map":
            keys = f" with keys among {', '.join(self.keys)}" if self.keys else ""
            text = f"a mapping{keys} to ({self.values.describe()})"
        else:
            text = {"int": "an integer", "float": "a finite number", "bool": "true or false", "str": "a string"}[
                self.type
            ]
            bounds = [
                f"{op} {_num(v)}"
                for op, v in ((">=", self.min), (">", self.exclusive_min), ("<=", self.max), ("<", self.exclusive_max))
                if v is not None
            ]
            if bounds:
                text += " " + " and ".join(bounds)
        return text + (" or null" if self.nullable else "")

    # ---- coercion ----------------------------------------------------------------------------
    def coerce(self, value: Any) -> Any:
        """``value`` in the declared type, or :class:`InvalidValue`."""
        if value is None:
            if self.nullable:
                return None
            raise InvalidValue(self, value)
        if self.type == "list":
            if not isinstance(value, (list, tuple)):
                raise InvalidValue(self, value)
            return [_element(self.items, v, f"[{i}]") for i, v in enumerate(value)]
        if self.type == "map":
            if not isinstance(value, dict):
                raise InvalidValue(self, value)
            for k in value:
                if self.keys is not None and k not in self.keys:
                    raise InvalidValue(self, value, f".{k}", unknown_key=True)
            return {k: _element(self.values, v, f".{k}") for k, v in value.items()}
        out = _SCALAR[self.type](value)
        if (
            out is None
            or (self.choices is not None and out not in self.choices)
            or (self.type in ("int", "float") and not self._in_range(out))
        ):
            raise InvalidValue(self, value)
        return out

    def _in_range(self, x: float) -> bool:
        return (
            (self.min is None or x >= self.min)
            and (self.max is None or x <= self.max)
            and (self.exclusive_min is None or x > self.exclusive_min)
            and (self.exclusive_max is None or x < self.exclusive_max)
        )


def _element(spec: Param, value: Any, at: str) -> Any:
    """An element of a list or map value, its position added to an error."""
    try:
        return spec.coerce(value)
    except InvalidValue as exc:
        raise InvalidValue(exc.spec, exc.value, at + exc.at, exc.unknown_key) from None


def invalid_message(key: str, exc: InvalidValue, where: str) -> str:
    """The one-line error of a value refused for config key ``key`` (set in ``where``)."""
    spec, path = exc.spec, key + exc.at
    if exc.unknown_key:
        return f"unknown config key '{path}' (known: {', '.join(spec.keys)}) (in {where})"
    if spec.choices is not None:
        known = ", ".join(map(str, spec.choices)) + (", null" if spec.nullable else "")
        return f"unknown {path} {exc.value!r} (known: {known}) (in {where})"
    return f"config key '{path}' must be {spec.describe()}, got {exc.value!r} (in {where})"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(v)


def _to_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            value = _to_float(value)
            if value is None:
                return None
    if isinstance(value, float):  # 3.0 -> 3; 3.5 is not an integer
        return int(value) if math.isfinite(value) and value.is_integer() else None
    return value if isinstance(value, int) else None


def _to_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, (int, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    return None


def _to_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def _to_str(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):  # --set run_id=7
        return str(value)
    return None


_SCALAR = {"int": _to_int, "float": _to_float, "bool": _to_bool, "str": _to_str}


def dataclass_params(cls) -> dict[str, Param]:
    """Typed parameters of a dataclass's fields, with its defaults (the dataclass stays their one
    place; its own checks give the ranges)."""
    names = {bool: "bool", int: "int", float: "float", str: "str"}
    return {
        f.name: Param(names[type(f.default)], f.default, source=f"{cls.__name__}.{f.name}")
        for f in dataclasses.fields(cls)
    }


# ---- declarations in documents -----------------------------------------------------------------


def parse_declaration(decl: Any, where: str, with_default: bool = True) -> Param:
    """One ``params:`` entry -> :class:`Param`; a malformed declaration raises :class:`ConfigError`
    naming ``where`` (the file and key)."""
    if not isinstance(decl, dict):
        raise ConfigError(
            f"{where}: a parameter declaration must be a mapping with type, default and source, got {decl!r}"
        )
    unknown = [k for k in decl if k not in DECLARATION_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown declaration key '{unknown[0]}' (known: {', '.join(DECLARATION_KEYS)})")
    kind = decl.get("type")
    if kind not in TYPES:
        raise ConfigError(f"{where}: unknown type {kind!r} (known: {', '.join(TYPES)})")
    if with_default and "default" not in decl:
        raise ConfigError(f"{where}: no default")
    if with_default and not (isinstance(decl.get("source"), str) and decl["source"].strip()):
        raise ConfigError(f"{where}: no source (the one-line citation of the default)")
    for bound in ("min", "max", "exclusive_min", "exclusive_max"):
        if bound in decl and (kind not in ("int", "float") or _to_float(decl[bound]) is None):
            raise ConfigError(f"{where}: '{bound}' needs a numeric type and a number, got {decl[bound]!r}")
    choices = decl.get("choices")
    if choices is not None and (kind not in SCALAR_TYPES or not isinstance(choices, list) or not choices):
        raise ConfigError(f"{where}: 'choices' needs a scalar type and a non-empty list")
    if (
        ("items" in decl) != (kind == "list")
        or ("values" in decl) != (kind == "map")
        or ("keys" in decl and kind != "map")
    ):
        raise ConfigError(
            f"{where}: a list declares 'items', a map 'values' (and optionally 'keys'); other types neither"
        )
    if "nullable" in decl and not isinstance(decl["nullable"], bool):
        raise ConfigError(f"{where}: 'nullable' must be true or false")
    if "keys" in decl and not (isinstance(decl["keys"], list) and all(isinstance(k, str) for k in decl["keys"])):
        raise ConfigError(f"{where}: 'keys' must be a list of strings")
    if choices is not None:
        try:
            choices = tuple(Param(kind).coerce(c) for c in choices)
        except InvalidValue:
            raise ConfigError(f"{where}: choices {decl['choices']} are not all of type {kind}") from None
    variants = decl.get("variants")
    if variants is not None:
        if kind not in SCALAR_TYPES or not isinstance(variants, dict) or not variants:
            raise ConfigError(f"{where}: 'variants' needs a scalar type and a mapping of values to names")
        if not all(isinstance(n, str) and n.strip() for n in variants.values()):
            raise ConfigError(f"{where}: 'variants' names must be non-empty strings")
        try:
            variants = tuple(
                (Param(kind, choices=choices).coerce(v), n.strip()) for v, n in variants.items()
            )
        except InvalidValue:
            raise ConfigError(f"{where}: 'variants' values {list(decl['variants'])} are not all allowed values") from None
    spec = Param(
        type=kind,
        nullable=decl.get("nullable", False),
        choices=choices,
        **{b: _to_float(decl[b]) for b in ("min", "max", "exclusive_min", "exclusive_max") if b in decl},
        items=parse_declaration(decl["items"], f"{where}.items", with_default=False) if kind == "list" else None,
        keys=tuple(decl["keys"]) if "keys" in decl else None,
        values=parse_declaration(decl["values"], f"{where}.values", with_default=False) if kind == "map" else None,
        source=str(decl.get("source", "")).strip(),
        variants=variants,
    )
    if not with_default:
        return spec
    try:
        return dataclasses.replace(spec, default=spec.coerce(decl["default"]))
    except InvalidValue as exc:
        raise ConfigError(f"{where}: default{exc.at} {exc.value!r} is not {exc.spec.describe()}") from None


def declared_params(doc: dict, where: str) -> dict[str, Param]:
    """The strategy hyperparameters a strategy document declares under ``params:``.

    ``where`` names the document in errors (e.g. ``strategies/cign.yaml``); the declarations
    themselves are checked (known type, a default inside its own range, a source).
    """
    section = doc.get("params")
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: 'params' must be a mapping of parameter declarations")
    out = {}
    for name, decl in section.items():
        if not isinstance(name, str) or name == "name":
            raise ConfigError(f"{where}: params.{name}: reserved or invalid parameter name")
        out[name] = parse_declaration(decl, f"{where} params.{name}")
    return out
