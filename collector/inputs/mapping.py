"""What a foreign point becomes: InfluxDB fields and Fluent records -> our readings (pure).

A reading is the wire shape `[sensor, kind, ts, value, unit, tags]` that
`collector.ingest.prepare.Ingest.prepare` validates, exactly as if an agent had sent it; so the
same kinds, ranges and reject codes apply, and nothing here trusts a value.

InfluxDB line protocol: one reading per field. sensor = measurement + "/" + field key
(`cpu/usage_idle`), tags = the point's tags. Fluent forward: one reading per record key
whose value is a number or a boolean: sensor = tag + "/" + key (`sensors.greenhouse/temp`),
tags = the record keys named in `tag_keys` (string values only). Other record values
(strings, maps, arrays, nil) are not readings: they become dead letters with a reason,
unless named in `ignore_keys`.

The kind comes from the first `KindRule` whose sensor glob (fnmatch) and value type match;
without one, by value type: float -> gauge, integer -> counter when >= 0 else gauge,
unsigned integer -> counter, boolean -> state, string -> text (line protocol only).

The rules come from the optional `inputs` file (TOML; see docs/inputs.md), read by
`load_inputs`. No I/O here except reading that file.
"""

from __future__ import annotations

import fnmatch
import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

import msgpack

from collector.errors import ConfigError
from collector.ingest.prepare import DeadLetter
from collector.inputs.lineprotocol import FieldType, Point

ValueType: TypeAlias = FieldType
Reading: TypeAlias = list[object]
SENSOR_SEPARATOR: Final = "/"
_TYPES: Final = ("float", "integer", "uinteger", "boolean", "string")
# Dead-letter codes (docs/protocol.md §6) for values that never become a reading.
WRONG_TYPE: Final = "wrong_type"
INVALID: Final = "invalid"


@dataclass(frozen=True, slots=True)
class KindRule:
    """Readings whose sensor matches `sensor` (a glob) and whose value type is `type`
    (any when None) get `kind` and `unit`."""

    sensor: str
    kind: str
    unit: str | None = None
    type: ValueType | None = None


@dataclass(frozen=True, slots=True)
class InfluxMapping:
    rules: tuple[KindRule, ...] = ()


FORWARD_AUTH: Final = ("handshake", "record")


@dataclass(frozen=True, slots=True)
class ForwardMapping:
    rules: tuple[KindRule, ...] = ()
    # "handshake": the device is proven by the shared-key handshake
    # (collector.inputs.fluent_server); "record": every record carries its device's token under
    # `token_key`.
    auth: str = "handshake"
    token_key: str = "_token"
    # Record keys whose string values become tags of every reading of the record.
    tag_keys: tuple[str, ...] = ()
    # Record keys that are neither readings nor dead letters (e.g. a log line).
    ignore_keys: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class InputsConfig:
    influx: InfluxMapping = field(default_factory=InfluxMapping)
    forward: ForwardMapping = field(default_factory=ForwardMapping)


def default_kind(vtype: ValueType, value: object) -> str:
    """The kind for a value type when no rule matches."""
    if vtype == "float":
        return "gauge"
    if vtype == "integer":
        return "counter" if isinstance(value, int) and value >= 0 else "gauge"
    if vtype == "uinteger":
        return "counter"
    if vtype == "boolean":
        return "state"
    return "text"


def kind_for(
    rules: Sequence[KindRule], sensor: str, vtype: ValueType, value: object
) -> tuple[str, str | None]:
    """(kind, unit) for a reading: the first matching rule, else the type's default."""
    for r in rules:
        if (r.type is None or r.type == vtype) and fnmatch.fnmatchcase(sensor, r.sensor):
            return r.kind, r.unit
    return default_kind(vtype, value), None


def point_readings(m: InfluxMapping, p: Point, ts_ns: int) -> list[Reading]:
    """One reading per field of a line-protocol point, at `ts_ns`."""
    tags = dict(p.tags) or None
    out: list[Reading] = []
    for f in p.fields:
        sensor = p.measurement + SENSOR_SEPARATOR + f.key
        kind, unit = kind_for(m.rules, sensor, f.type, f.value)
        out.append([sensor, kind, ts_ns, f.value, unit, tags])
    return out


@dataclass(frozen=True, slots=True)
class Unmapped:
    """A record value that is not a reading: kept as a dead letter with this reason."""

    key: str
    value: object
    code: str
    message: str


def record_readings(
    m: ForwardMapping, tag: str, record: Mapping[object, object], ts_ns: int
) -> tuple[list[Reading], list[Unmapped]]:
    """The readings of one Fluent record, and the values that could not be readings."""
    tags: dict[str, str] = {}
    for k in m.tag_keys:
        v = record.get(k)
        if isinstance(v, str):
            tags[k] = v
    out: list[Reading] = []
    bad: list[Unmapped] = []
    skip = set(m.ignore_keys) | set(tags)
    for key, value in record.items():
        if not isinstance(key, str):
            bad.append(Unmapped(repr(key), value, INVALID, "record key is not a string"))
            continue
        if key in skip:
            continue
        vtype = _value_type(value)
        if vtype is None:
            what = "string" if isinstance(value, str) else type(value).__name__
            bad.append(
                Unmapped(key, value, WRONG_TYPE, f"record key {key!r}: {what} is not a number")
            )
            continue
        sensor = tag + SENSOR_SEPARATOR + key
        kind, unit = kind_for(m.rules, sensor, vtype, value)
        out.append([sensor, kind, ts_ns, value, unit, tags or None])
    return out, bad


def _value_type(v: object) -> Literal["float", "integer", "boolean"] | None:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "float"
    return None


def dead_letter(index: int, item: object, code: str, path: str, message: str) -> DeadLetter:
    """A dead-letter row for something that never became a reading (as received)."""
    try:
        raw = msgpack.packb(item, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        raw = msgpack.packb(repr(item), use_bin_type=True)
    text = json.dumps(_jsonable(item), ensure_ascii=False, allow_nan=False)
    return DeadLetter(index, raw, text, code, path, message)


def _jsonable(v: object) -> object:
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    if isinstance(v, str):
        return v.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if v is None or isinstance(v, bool | int | float):
        return v
    return repr(v)


# ---------------------------------------------------------------- the inputs file


def load_inputs(path: str | None, known_kinds: Sequence[str]) -> InputsConfig:
    """Read the `inputs` file (None: defaults). Raises ConfigError naming the bad entry."""
    if path is None:
        return InputsConfig()
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"setting 'inputs': cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"setting 'inputs': {path} is not valid TOML: {exc}") from None
    _only(data, {"influx", "forward"}, "")
    influx = _table(data, "influx")
    forward = _table(data, "forward")
    _only(influx, {"kinds"}, "influx.")
    _only(forward, {"kinds", "auth", "token_key", "tag_keys", "ignore_keys"}, "forward.")
    auth = forward.get("auth", "handshake")
    if auth not in FORWARD_AUTH:
        raise ConfigError(
            f"setting 'inputs': 'forward.auth' must be one of {', '.join(FORWARD_AUTH)}"
        )
    token_key = forward.get("token_key", "_token")
    if not isinstance(token_key, str) or not token_key:
        raise ConfigError("setting 'inputs': 'forward.token_key' must be a non-empty string")
    return InputsConfig(
        InfluxMapping(_rules(influx, "influx", known_kinds)),
        ForwardMapping(
            _rules(forward, "forward", known_kinds),
            str(auth),
            token_key,
            _strings(forward, "tag_keys"),
            _strings(forward, "ignore_keys"),
        ),
    )


def _only(t: Mapping[str, object], allowed: set[str], prefix: str) -> None:
    for k in t:
        if k not in allowed:
            raise ConfigError(f"setting 'inputs': unknown entry '{prefix}{k}'")


def _table(data: Mapping[str, object], name: str) -> Mapping[str, object]:
    t = data.get(name, {})
    if not isinstance(t, dict):
        raise ConfigError(f"setting 'inputs': '{name}' must be a table")
    return t


def _strings(t: Mapping[str, object], name: str) -> tuple[str, ...]:
    v = t.get(name, [])
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ConfigError(f"setting 'inputs': 'forward.{name}' must be a list of strings")
    return tuple(v)


def _rules(t: Mapping[str, object], where: str, known_kinds: Sequence[str]) -> tuple[KindRule, ...]:
    items = t.get("kinds", [])
    if not isinstance(items, list):
        raise ConfigError(f"setting 'inputs': '{where}.kinds' must be an array of tables")
    out: list[KindRule] = []
    for n, r in enumerate(items, 1):
        at = f"{where}.kinds #{n}"
        if not isinstance(r, dict):
            raise ConfigError(f"setting 'inputs': {at} must be a table")
        _only(r, {"sensor", "kind", "unit", "type"}, f"{at} ")
        sensor, kind, unit, vtype = r.get("sensor"), r.get("kind"), r.get("unit"), r.get("type")
        if not isinstance(sensor, str) or not isinstance(kind, str):
            raise ConfigError(f"setting 'inputs': {at} needs 'sensor' and 'kind' strings")
        if kind not in known_kinds:
            raise ConfigError(f"setting 'inputs': {at}: unknown kind {kind!r}")
        if unit is not None and not isinstance(unit, str):
            raise ConfigError(f"setting 'inputs': {at}: 'unit' must be a string")
        if vtype is not None and vtype not in _TYPES:
            raise ConfigError(f"setting 'inputs': {at}: 'type' must be one of {', '.join(_TYPES)}")
        out.append(KindRule(sensor, kind, unit, vtype))
    return tuple(out)
