"""Validation of readings against the kind registry, compiled into pydantic v2 validators.

A wire reading is the array `[sensor, kind, ts, value, unit, tags]`. Every (kind, unit) pair
compiles to one strict pydantic tuple type carrying that unit's bounds; a callable
discriminator picks the member from the reading's kind and unit, so a batch is validated by
one `TypeAdapter(list[...])` call in pydantic-core (no model object per reading). Object
kinds (gps, acceleration, user-defined) validate their value as a TypedDict that forbids
extra keys.

`ReadingValidator.validate_batch` returns the valid readings plus one `Reject` per invalid
reading (index, code, field path, message). Every batch costs one pass: an invalid reading
is marked in place, and only the invalid ones are validated again to learn why.

`ReadingValidator.validate_groups` checks series groups (protocol v1.2) column-wise: each
(kind, unit) member also compiles to a group tuple `[sensor, kind, unit, tags, list[ts],
list[value]]` built from the very same field types, so a group validates exactly when each
of its member readings would, to the same values. A group that fails is reported as None;
the caller validates its members as readings (`validate_batch`) to learn the rejects, so a
reading's reject never depends on the form it travelled in.

No I/O in this module; collector-side only (the agent never imports pydantic).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import (
    Annotated,
    Any,
    Final,
    Literal,
    NotRequired,
    Required,
    TypeAlias,
    Union,
)

from pydantic import (
    ConfigDict,
    Discriminator,
    Field,
    GetCoreSchemaHandler,
    StrictBool,
    StrictInt,
    Tag,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import core_schema
from typing_extensions import TypedDict

from schemas.kinds import BUILTIN_KINDS, MAX_TEXT_CHARS, Bounds, FieldSpec, KindSpec, merge_kinds
from schemas.wire import MAX_INT64, Reject

# Sensor names are path-like: "greenhouse/air-temp", "pump-3/flow".
SENSOR_PATTERN: Final = r"^[A-Za-z0-9_][A-Za-z0-9_./:-]{0,127}$"
TAG_KEY_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"
MAX_TAG_VALUE_CHARS: Final = 256
MAX_TAGS: Final = 16
MAX_FREE_UNIT_CHARS: Final = 16

# Field positions in the wire reading, and their names for error paths.
FIELD_NAMES: Final = ("sensor", "kind", "ts", "value", "unit", "tags")

Scalar: TypeAlias = int | float | bool | str
Value: TypeAlias = Scalar | dict[str, Scalar]
ValidReading: TypeAlias = tuple[str, str, int, Value, str | None, dict[str, str] | None]
"""A validated reading: (sensor, kind, ts_ns, value, unit or None, tags or None)."""

# Reject codes (ACK rejects and the dead-letter table). See docs/protocol.md §6.
NOT_A_READING: Final = "not_a_reading"
UNKNOWN_KIND: Final = "unknown_kind"
BAD_UNIT: Final = "bad_unit"
WRONG_TYPE: Final = "wrong_type"
OUT_OF_RANGE: Final = "out_of_range"
NOT_FINITE: Final = "not_finite"
BAD_TIMESTAMP: Final = "bad_timestamp"
BAD_SENSOR: Final = "bad_sensor"
BAD_TAGS: Final = "bad_tags"
MISSING_FIELD: Final = "missing_field"
UNKNOWN_FIELD: Final = "unknown_field"
TOO_LONG: Final = "too_long"
INVALID: Final = "invalid"

_Sensor = Annotated[str, Field(strict=True, pattern=SENSOR_PATTERN)]
_Ts = Annotated[int, Field(strict=True, ge=0, le=MAX_INT64)]
_Tags = (
    Annotated[
        dict[
            Annotated[str, Field(strict=True, pattern=TAG_KEY_PATTERN)],
            Annotated[str, Field(strict=True, max_length=MAX_TAG_VALUE_CHARS)],
        ],
        Field(max_length=MAX_TAGS),
    ]
    | None
)
_SHAPE_TAG: Final = "\x00shape"


def _scalar_type(vtype: str, bounds: Bounds) -> object:
    if vtype == "number":
        return Annotated[
            float, Field(strict=True, allow_inf_nan=False, ge=bounds.min, le=bounds.max)
        ]
    if vtype == "integer":
        # Round inward: min 0.5 admits 1, not 0. Always within int64.
        lo = -MAX_INT64 - 1 if bounds.min is None else max(-MAX_INT64 - 1, math.ceil(bounds.min))
        hi = MAX_INT64 if bounds.max is None else min(MAX_INT64, math.floor(bounds.max))
        return Annotated[StrictInt, Field(ge=lo, le=hi)]
    if vtype == "bool":
        return StrictBool
    if vtype == "text":
        return Annotated[str, Field(strict=True, max_length=MAX_TEXT_CHARS)]
    raise ValueError(f"not a scalar type: {vtype}")


def _object_type(spec: KindSpec) -> object:
    fields: dict[str, object] = {}
    for f in spec.fields:
        t = _scalar_type(f.type, f.bounds)
        fields[f.name] = Required[t] if f.required else NotRequired[t]
    td: Any = TypedDict(f"{spec.name.title()}Value", fields)  # type: ignore[misc]  # dynamic TypedDict
    # pydantic reads this attribute from any TypedDict; mypy does not know it.
    setattr(td, "__pydantic_config__", ConfigDict(extra="forbid"))  # noqa: B010
    return td


def _value_type(spec: KindSpec, bounds: Bounds) -> object:
    if spec.type == "object":
        return _object_type(spec)
    merged = Bounds(
        bounds.min if bounds.min is not None else spec.bounds.min,
        bounds.max if bounds.max is not None else spec.bounds.max,
    )
    return _scalar_type(spec.type, merged)


def _member(kind: str, value_t: object, unit_t: object) -> object:
    return tuple[_Sensor, Literal[kind], _Ts, value_t, unit_t, _Tags]  # type: ignore[valid-type]  # built at run time


def _group_member(kind: str, value_t: object, unit_t: object) -> object:
    # The same field types as `_member`, the per-reading ones as columns.
    return tuple[_Sensor, Literal[kind], unit_t, _Tags, list[_Ts], list[value_t]]  # type: ignore[valid-type]  # built at run time


ValidGroup: TypeAlias = tuple[str, str, str | None, dict[str, str] | None, list[int], list[Value]]
"""A validated group: (sensor, kind, unit or None, tags or None, ts column, value column)."""


@dataclass(frozen=True, slots=True)
class BatchResult:
    """Outcome of validating one batch: valid readings in order, and one reject per bad one."""

    valid: list[ValidReading]
    valid_index: list[int]
    rejects: list[Reject]


class ReadingValidator:
    """Validates batches of wire readings against a kind registry (built-ins plus extras)."""

    def __init__(self, extra_kinds: Iterable[KindSpec] = ()) -> None:
        self.kinds: dict[str, KindSpec] = merge_kinds(BUILTIN_KINDS, extra_kinds)
        members: list[object] = []
        group_members: list[object] = []

        def add(tag: str, kind: str, value_t: object, unit_t: object) -> None:
            members.append(Annotated[_member(kind, value_t, unit_t), Tag(tag)])
            group_members.append(Annotated[_group_member(kind, value_t, unit_t), Tag(tag)])

        # kind -> {unit or None -> tag}; "*" is the fallback member for any other unit.
        self._tags: dict[str, dict[object, str]] = {}
        for spec in self.kinds.values():
            tags: dict[object, str] = {}
            if spec.units:
                for unit, bounds in spec.units.items():
                    tag = f"{spec.name}|{unit}"
                    add(tag, spec.name, _value_type(spec, bounds), Literal[unit])
                    tags[unit] = tag
                if spec.default_unit is not None:
                    tags[None] = tag = f"{spec.name}|"
                    bounds = spec.units[spec.default_unit]
                    add(tag, spec.name, _value_type(spec, bounds), None)
                # Any other unit: the Literal of accepted units reports the error.
                allowed: object = Literal[tuple(spec.units)]
                if spec.default_unit is not None:
                    allowed = allowed | None  # type: ignore[operator]  # typing special form
                tags["*"] = tag = f"{spec.name}|*"
                add(tag, spec.name, _value_type(spec, Bounds()), allowed)
            else:
                unit_t: object = (
                    Annotated[str, Field(strict=True, max_length=MAX_FREE_UNIT_CHARS)] | None
                    if spec.free_unit
                    else None
                )
                tags["*"] = tag = f"{spec.name}|*"
                add(tag, spec.name, _value_type(spec, Bounds()), unit_t)
            self._tags[spec.name] = tags
        # A reading of the wrong shape validates against the generic tuple to say why.
        members.append(
            Annotated[
                tuple[_Sensor, str, _Ts, object, str | None, _Tags],
                Tag(_SHAPE_TAG),
            ]
        )
        union = Annotated[  # type: ignore[valid-type]  # a Union built at run time
            Union[tuple(members)],  # noqa: UP007  # X | Y cannot unpack a run-time tuple
            Discriminator(
                self._discriminate,
                custom_error_type=UNKNOWN_KIND,
                custom_error_message="unknown sensor kind",
            ),
        ]
        # The batch validator never raises for an invalid reading: it puts _INVALID in its
        # place (pydantic-core's on_error="default"), so a batch with rejects costs one pass
        # plus one strict pass over its invalid readings only, to learn why.
        self._batch: TypeAdapter[list[ValidReading | _Invalid]] = TypeAdapter(
            list[Annotated[union, _INVALID]]  # type: ignore[valid-type]  # run-time union
        )
        self._strict: TypeAdapter[list[ValidReading]] = TypeAdapter(list[union])  # type: ignore[valid-type]  # run-time union
        # Groups: the same members as columns. No shape member: a group whose kind is not a
        # known kind's string fails here, and its members are validated as readings.
        group_union = Annotated[  # type: ignore[valid-type]  # a Union built at run time
            Union[tuple(group_members)],  # noqa: UP007  # X | Y cannot unpack a run-time tuple
            Discriminator(self._discriminate_group),
        ]
        self._groups: TypeAdapter[list[ValidGroup | _Invalid]] = TypeAdapter(
            list[Annotated[group_union, _INVALID]]  # type: ignore[valid-type]  # run-time union
        )

    def _discriminate(self, v: object) -> str | None:
        if type(v) is not list:
            # Not a decoded msgpack array: rejected as not_a_reading by `_reject`. It must not
            # reach the shape member, whose lax tuple would accept a tuple of any value.
            return None
        if len(v) != 6:
            return _SHAPE_TAG
        kind = v[1]
        if type(kind) is not str:
            return _SHAPE_TAG
        tags = self._tags.get(kind)
        if tags is None:
            return None  # -> unknown_kind
        unit = v[4]
        if type(unit) is str or unit is None:
            return tags.get(unit) or tags["*"]
        return tags["*"]

    def _discriminate_group(self, g: object) -> str | None:
        # Groups reach here checked by schemas.wire: arrays of 6 with equal-length columns.
        if type(g) is not list or len(g) != 6:
            return None
        kind = g[1]
        tags = self._tags.get(kind) if type(kind) is str else None
        if tags is None:
            return None
        unit = g[2]
        if type(unit) is str or unit is None:
            return tags.get(unit) or tags["*"]
        return tags["*"]

    def validate_groups(self, groups: Sequence[object]) -> list[ValidGroup | None]:
        """Validate well-formed wire groups column-wise, in one pass: each one's validated
        form, or None when any of its members is invalid (validate those as readings)."""
        out = self._groups.validate_python(groups)
        return [None if isinstance(g, _Invalid) else g for g in out]

    def validate_batch(self, readings: Sequence[object]) -> BatchResult:
        """Validate a batch as a whole; never raises for bad readings, only reports them."""
        out = self._batch.validate_python(readings)
        if _INVALID not in out:
            return BatchResult(out, list(range(len(out))), [])  # type: ignore[arg-type]  # no _INVALID
        valid: list[ValidReading] = []
        valid_index: list[int] = []
        invalid: list[int] = []
        for i, r in enumerate(out):
            if isinstance(r, _Invalid):
                invalid.append(i)
            else:
                valid.append(r)
                valid_index.append(i)
        return BatchResult(valid, valid_index, self._why(readings, invalid))

    def _why(self, readings: Sequence[object], invalid: list[int]) -> list[Reject]:
        """One reject per reading the batch validator marked invalid, in index order."""
        first: dict[int, Reject] = {}
        try:
            self._strict.validate_python([readings[i] for i in invalid])
        except ValidationError as exc:
            for err in exc.errors(include_url=False, include_input=False, include_context=False):
                loc = err["loc"]
                j = loc[0] if loc and isinstance(loc[0], int) else -1
                if 0 <= j < len(invalid) and j not in first:
                    i = invalid[j]
                    first[j] = _reject(i, readings[i], err["type"], loc[1:], err["msg"])
        if len(first) != len(invalid):
            raise AssertionError("a reading failed in its batch but validates on its own")
        return [first[j] for j in range(len(invalid))]


class _Invalid:
    """Marks an invalid reading in the batch validator's output."""

    __slots__ = ()

    def __get_pydantic_core_schema__(
        self, source: object, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.with_default_schema(handler(source), default=self, on_error="default")


# Also the Annotated metadata that means "this item, or _INVALID when it fails".
_INVALID: Final = _Invalid()


def _reject(
    index: int, reading: object, etype: str, loc: tuple[int | str, ...], msg: str
) -> Reject:
    if type(reading) is not list or len(reading) != 6:
        got = f"an array of {len(reading)}" if isinstance(reading, list) else type(reading).__name__
        return Reject(
            index,
            NOT_A_READING,
            "",
            f"a reading must be an array of 6 elements [sensor, kind, ts, value, unit, tags], "
            f"got {got}",
        )
    if etype == UNKNOWN_KIND:
        return Reject(index, UNKNOWN_KIND, "kind", f"unknown sensor kind {reading[1]!r:.64}")
    # loc: (member tag, position, *nested keys) for union members.
    if loc and isinstance(loc[0], str) and ("|" in loc[0] or loc[0] == _SHAPE_TAG):
        loc = loc[1:]
    if not loc:
        return Reject(index, INVALID, "", msg)
    pos = loc[0]
    name = FIELD_NAMES[pos] if isinstance(pos, int) and 0 <= pos < 6 else str(pos)
    path = ".".join([name, *(str(p) for p in loc[1:])])
    return Reject(index, _code(name, etype), path, msg)


def _code(field: str, etype: str) -> str:
    if etype in ("finite_number",):
        return NOT_FINITE
    if field == "ts":
        return BAD_TIMESTAMP
    if field == "sensor":
        return BAD_SENSOR
    if field == "tags":
        return BAD_TAGS
    if field == "unit":
        return BAD_UNIT
    if etype in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        return OUT_OF_RANGE
    if etype == "missing":
        return MISSING_FIELD
    if etype == "extra_forbidden":
        return UNKNOWN_FIELD
    if etype in ("string_too_long", "too_long"):
        return TOO_LONG
    if etype.endswith(("_type", "_parsing")) or etype == "literal_error":
        return WRONG_TYPE
    return INVALID


def kinds_summary(kinds: Mapping[str, KindSpec]) -> list[dict[str, object]]:
    """A JSON-able description of each kind (for `--help`, docs and the HTTP API)."""
    out: list[dict[str, object]] = []
    for spec in kinds.values():
        out.append(
            {
                "kind": spec.name,
                "type": spec.type,
                "units": list(spec.units) or ("any" if spec.free_unit else None),
                "default_unit": spec.default_unit,
                "fields": [_field_summary(f) for f in spec.fields],
                "description": spec.description,
            }
        )
    return out


def _field_summary(f: FieldSpec) -> dict[str, object]:
    return {
        "name": f.name,
        "type": f.type,
        "min": f.bounds.min,
        "max": f.bounds.max,
        "required": f.required,
    }
