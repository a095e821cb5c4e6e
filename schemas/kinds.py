"""The sensor-kind registry: built-in kinds and user-defined kinds from a TOML file.

A kind says what a reading's value may be (number, integer, bool, text or an object of named
fields), which units it accepts and the physically meaningful range for each unit. This module
only describes kinds as data; `schemas.readings` compiles them into pydantic validators.

No I/O except `load_kinds_file`, which reads the one file it is given.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

ValueType = Literal["number", "integer", "bool", "text", "object"]
VALUE_TYPES: Final = ("number", "integer", "bool", "text", "object")

KIND_NAME_RE: Final = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
FIELD_NAME_RE: Final = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
# Units are short printable tokens such as "C", "m/s2", "%", "kWh".
UNIT_RE: Final = re.compile(r"^[A-Za-z%°/0-9._^*-]{1,16}$")
# Longest event/text value, in characters.
MAX_TEXT_CHARS: Final = 1024
# Composite kinds stay small: a reading is a measurement, not a document.
MAX_FIELDS: Final = 16


@dataclass(frozen=True, slots=True)
class Bounds:
    """Inclusive range a numeric value must lie in; None is unbounded."""

    min: float | None = None
    max: float | None = None


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One named field of an object kind."""

    name: str
    type: Literal["number", "integer", "bool", "text"]
    bounds: Bounds = Bounds()
    required: bool = True


@dataclass(frozen=True, slots=True)
class KindSpec:
    """What a reading of one kind may carry.

    `units` lists accepted units with their bounds (None: any range); when it is empty the
    unit is free-form (`free_unit`) or must be nil. `default_unit` applies when a reading's
    unit is nil.
    """

    name: str
    type: ValueType
    units: Mapping[str, Bounds] = field(default_factory=dict)
    default_unit: str | None = None
    free_unit: bool = False
    bounds: Bounds = Bounds()
    fields: tuple[FieldSpec, ...] = ()
    description: str = ""


def _num(lo: float | None = None, hi: float | None = None) -> Bounds:
    return Bounds(lo, hi)


_NONNEG: Final = _num(0, None)

BUILTIN_KINDS: Final[tuple[KindSpec, ...]] = (
    KindSpec(
        "temperature",
        "number",
        # Absolute zero in each scale.
        {"C": _num(-273.15), "F": _num(-459.67), "K": _num(0)},
        default_unit="C",
        description="temperature, not below absolute zero",
    ),
    KindSpec("humidity", "number", {"%": _num(0, 100)}, "%", description="relative humidity"),
    KindSpec(
        "pressure",
        "number",
        dict.fromkeys(("Pa", "hPa", "kPa", "bar", "psi", "mmHg"), _NONNEG),
        "hPa",
        description="absolute pressure, non-negative",
    ),
    KindSpec("voltage", "number", {"V": _num(), "mV": _num(), "kV": _num()}, "V"),
    KindSpec("current", "number", {"A": _num(), "mA": _num()}, "A"),
    KindSpec("power", "number", {"W": _num(), "kW": _num(), "mW": _num()}, "W"),
    KindSpec(
        "energy",
        "number",
        {"Wh": _NONNEG, "kWh": _NONNEG, "J": _NONNEG},
        "Wh",
        description="energy meter reading: a non-negative counter",
    ),
    KindSpec(
        "gps",
        "object",
        fields=(
            FieldSpec("lat", "number", _num(-90, 90)),
            FieldSpec("lon", "number", _num(-180, 180)),
            # From the Dead Sea shore to the edge of the stratosphere, in metres.
            FieldSpec("alt", "number", _num(-1_000, 100_000), required=False),
        ),
        description="position: lat/lon in degrees, optional alt in metres",
    ),
    KindSpec(
        "acceleration",
        "object",
        {"m/s2": _num(), "g": _num()},
        "m/s2",
        fields=(FieldSpec("x", "number"), FieldSpec("y", "number"), FieldSpec("z", "number")),
    ),
    KindSpec("gauge", "number", free_unit=True, description="any finite number"),
    KindSpec(
        "counter",
        "integer",
        free_unit=True,
        bounds=_NONNEG,
        description="non-negative integer count",
    ),
    KindSpec("state", "bool", description="on/off, open/closed"),
    KindSpec("event", "text", description=f"short text, at most {MAX_TEXT_CHARS} characters"),
    KindSpec("text", "text", description=f"short text, at most {MAX_TEXT_CHARS} characters"),
)


class KindFileError(ValueError):
    """A user-defined kinds file is invalid; the message names the file, kind and field."""


def load_kinds_file(path: str | Path) -> tuple[KindSpec, ...]:
    """Read user-defined kinds from a TOML file.

    Raises KindFileError naming the file, the kind and the key at fault.
    """
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KindFileError(f"{p}: cannot read kinds file: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise KindFileError(f"{p}: not valid TOML: {exc}") from None
    return parse_kinds(data, source=str(p))


def parse_kinds(data: Mapping[str, object], *, source: str = "<kinds>") -> tuple[KindSpec, ...]:
    """Build kind specs from the parsed TOML document (`[kinds.<name>]` tables)."""
    unknown_top = set(data) - {"kinds"}
    if unknown_top:
        raise KindFileError(f"{source}: unknown top-level key(s) {sorted(unknown_top)}")
    kinds = data.get("kinds", {})
    if not isinstance(kinds, dict):
        raise KindFileError(f"{source}: 'kinds' must be a table of [kinds.<name>] tables")
    builtin = {k.name for k in BUILTIN_KINDS}
    out: list[KindSpec] = []
    for name, table in kinds.items():
        where = f"{source}: kind {name!r}"
        if not KIND_NAME_RE.match(name):
            raise KindFileError(f"{where}: name must match {KIND_NAME_RE.pattern}")
        if name in builtin:
            raise KindFileError(f"{where}: redefines a built-in kind")
        if not isinstance(table, dict):
            raise KindFileError(f"{where}: must be a table")
        out.append(_parse_kind(name, table, where))
    return tuple(out)


_KIND_KEYS: Final = {"type", "units", "unit", "default_unit", "min", "max", "fields", "description"}
_FIELD_KEYS: Final = {"type", "min", "max", "required"}


def _bound(table: Mapping[str, object], key: str, where: str) -> float | None:
    v = table.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise KindFileError(f"{where}: '{key}' must be a finite number, got {v!r}")
    return float(v)


def _bounds(table: Mapping[str, object], where: str) -> Bounds:
    b = Bounds(_bound(table, "min", where), _bound(table, "max", where))
    if b.min is not None and b.max is not None and b.min > b.max:
        raise KindFileError(f"{where}: 'min' ({b.min}) is greater than 'max' ({b.max})")
    return b


def _parse_kind(name: str, table: Mapping[str, object], where: str) -> KindSpec:
    extra = set(table) - _KIND_KEYS
    if extra:
        raise KindFileError(f"{where}: unknown key(s) {sorted(extra)}")
    vtype = table.get("type")
    if vtype not in VALUE_TYPES:
        raise KindFileError(f"{where}, field 'type': must be one of {', '.join(VALUE_TYPES)}")
    units = _parse_units(table, where)
    default_unit = table.get("default_unit", units[0] if units else None)
    if default_unit is not None and default_unit not in units:
        raise KindFileError(f"{where}, field 'default_unit': {default_unit!r} is not in units")
    bounds = _bounds(table, where)
    if vtype in ("bool", "text", "object") and (bounds.min is not None or bounds.max is not None):
        raise KindFileError(f"{where}: 'min'/'max' apply to number and integer kinds only")
    fields: tuple[FieldSpec, ...] = ()
    raw_fields = table.get("fields")
    if vtype == "object":
        if not isinstance(raw_fields, dict) or not raw_fields:
            raise KindFileError(f"{where}: an object kind needs a [kinds.{name}.fields] table")
        if len(raw_fields) > MAX_FIELDS:
            raise KindFileError(f"{where}: at most {MAX_FIELDS} fields")
        fields = tuple(_parse_field(f, t, f"{where}, field {f!r}") for f, t in raw_fields.items())
    elif raw_fields is not None:
        raise KindFileError(f"{where}: 'fields' is only for kinds of type 'object'")
    desc = table.get("description", "")
    if not isinstance(desc, str):
        raise KindFileError(f"{where}, field 'description': must be a string")
    return KindSpec(
        name=name,
        type=vtype,
        units=dict.fromkeys(units, bounds),
        default_unit=default_unit if isinstance(default_unit, str) else None,
        bounds=bounds,
        fields=fields,
        description=desc,
    )


def _parse_units(table: Mapping[str, object], where: str) -> list[str]:
    raw = table.get("units", [table["unit"]] if "unit" in table else [])
    if not isinstance(raw, list) or not all(isinstance(u, str) for u in raw):
        raise KindFileError(f"{where}, field 'units': must be a list of strings")
    for u in raw:
        if not UNIT_RE.match(u):
            raise KindFileError(f"{where}, field 'units': {u!r} is not a valid unit")
    return list(raw)


def _parse_field(name: str, table: object, where: str) -> FieldSpec:
    if not FIELD_NAME_RE.match(name):
        raise KindFileError(f"{where}: name must match {FIELD_NAME_RE.pattern}")
    if not isinstance(table, dict):
        raise KindFileError(f'{where}: must be a table such as {{ type = "number" }}')
    extra = set(table) - _FIELD_KEYS
    if extra:
        raise KindFileError(f"{where}: unknown key(s) {sorted(extra)}")
    ftype = table.get("type")
    if ftype not in ("number", "integer", "bool", "text"):
        raise KindFileError(f"{where}, key 'type': must be number, integer, bool or text")
    required = table.get("required", True)
    if not isinstance(required, bool):
        raise KindFileError(f"{where}, key 'required': must be true or false")
    return FieldSpec(name, ftype, _bounds(table, where), required)


def merge_kinds(*groups: Iterable[KindSpec]) -> dict[str, KindSpec]:
    """Combine kind specs into a registry; a duplicate name is an error."""
    out: dict[str, KindSpec] = {}
    for group in groups:
        for spec in group:
            if spec.name in out:
                raise KindFileError(f"kind {spec.name!r} is defined twice")
            out[spec.name] = spec
    return out
