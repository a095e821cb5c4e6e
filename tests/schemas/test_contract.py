"""Contract: every reading an agent can build with `schemas.wire.Reading`, within its kind's
documented ranges, survives encode -> Connection -> decode -> validate unchanged.

The strategies are generated from the kind specs, so a new or changed kind is covered
without touching this file.
"""

from __future__ import annotations

import math
import tomllib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.kinds import BUILTIN_KINDS, MAX_TEXT_CHARS, Bounds, KindSpec, parse_kinds
from schemas.readings import (
    MAX_FREE_UNIT_CHARS,
    MAX_TAG_VALUE_CHARS,
    MAX_TAGS,
    SENSOR_PATTERN,
    TAG_KEY_PATTERN,
    ReadingValidator,
    ValidReading,
)
from schemas.wire import MAX_INT64, Batch, Connection, Hello, Reading, Role, Welcome

USER_KINDS = parse_kinds(
    tomllib.loads(
        """
[kinds.soil]
type = "number"
units = ["%", "vwc"]
min = 0
max = 100

[kinds.ticks]
type = "integer"
min = -5
max = 5000

[kinds.wind]
type = "object"
units = ["m/s"]
[kinds.wind.fields]
speed = { type = "number", min = 0, max = 120 }
direction = { type = "integer", min = 0, max = 359 }
calm = { type = "bool", required = false }
station = { type = "text", required = false }

[kinds.note]
type = "text"
"""
    )
)
VALIDATOR = ReadingValidator(USER_KINDS)


def _scalar(vtype: str, b: Bounds) -> st.SearchStrategy[object]:
    if vtype == "number":
        floats = st.floats(b.min, b.max, allow_nan=False, allow_infinity=False)
        lo = -(2**63) if b.min is None else math.ceil(b.min)
        hi = 2**64 - 1 if b.max is None else math.floor(b.max)
        return floats | st.integers(lo, hi)  # agents may send an int for a number kind
    if vtype == "integer":
        lo = -(2**63) if b.min is None else math.ceil(b.min)
        hi = MAX_INT64 if b.max is None else math.floor(b.max)
        return st.integers(lo, hi)
    if vtype == "bool":
        return st.booleans()
    assert vtype == "text"
    return st.text(max_size=MAX_TEXT_CHARS)


@st.composite
def readings_of(draw: st.DrawFn, spec: KindSpec) -> Reading:
    units: list[str | None] = list(spec.units)
    if spec.default_unit is not None or not spec.units:
        units.append(None)
    unit = draw(st.sampled_from(units))
    if spec.free_unit:
        unit = draw(st.none() | st.text(min_size=1, max_size=MAX_FREE_UNIT_CHARS))
    bounds = spec.units.get(unit if unit is not None else spec.default_unit or "", Bounds())
    merged = Bounds(
        bounds.min if bounds.min is not None else spec.bounds.min,
        bounds.max if bounds.max is not None else spec.bounds.max,
    )
    value: object
    if spec.type == "object":
        required = {f.name: _scalar(f.type, f.bounds) for f in spec.fields if f.required}
        optional = {f.name: _scalar(f.type, f.bounds) for f in spec.fields if not f.required}
        value = draw(st.fixed_dictionaries(required, optional=optional))
    else:
        value = draw(_scalar(spec.type, merged))
    tags = draw(
        st.none()
        | st.dictionaries(
            st.from_regex(TAG_KEY_PATTERN, fullmatch=True),
            st.text(max_size=MAX_TAG_VALUE_CHARS),
            max_size=MAX_TAGS,
        )
    )
    return Reading(
        sensor=draw(st.from_regex(SENSOR_PATTERN, fullmatch=True)),
        kind=spec.name,
        ts_ns=draw(st.integers(0, MAX_INT64)),
        value=value,  # type: ignore[arg-type]  # drawn from the kind's own value type
        unit=unit,
        tags=tags,
    )


def _expected(spec: KindSpec, r: Reading) -> ValidReading:
    def norm(vtype: str, v: object) -> object:
        return float(v) if vtype == "number" else v  # type: ignore[arg-type]  # numbers only

    if spec.type == "object":
        types = {f.name: f.type for f in spec.fields}
        assert isinstance(r.value, dict)
        value: object = {k: norm(types[k], v) for k, v in r.value.items()}
    else:
        value = norm(spec.type, r.value)
    tags = dict(r.tags) if r.tags is not None else None
    return (r.sensor, r.kind, r.ts_ns, value, r.unit, tags)  # type: ignore[return-value]  # normalised value


def _through_the_wire(readings: list[Reading]) -> list[object]:
    agent, collector = Connection(Role.AGENT), Connection(Role.COLLECTOR)
    collector.receive_data(agent.send(Hello("d", "t")))
    collector.next_event()
    agent.receive_data(collector.send(Welcome(0)))
    agent.next_event()
    collector.receive_data(agent.send(Batch(1, readings)))
    event = collector.next_event()
    assert isinstance(event, Batch)
    return list(event.readings)


@pytest.mark.parametrize("spec", BUILTIN_KINDS + USER_KINDS, ids=lambda s: s.name)
@settings(max_examples=25)  # per kind: 18 kinds share the time budget
@given(data=st.data())
def test_everything_an_agent_builds_validates(spec: KindSpec, data: st.DataObject) -> None:
    readings = data.draw(st.lists(readings_of(spec), min_size=1, max_size=5))
    result = VALIDATOR.validate_batch(_through_the_wire(readings))
    assert result.rejects == []
    assert result.valid == [_expected(spec, r) for r in readings]


def test_timestamp_extension_validates_as_int_nanoseconds() -> None:
    """An agent in another language may send ts as the msgpack Timestamp ext (-1)."""
    from schemas.wire import decode_body

    ts = msgpack.Timestamp(1_700_000_000, 5)
    body = msgpack.packb([3, 1, [["s", "gauge", ts, 1.5, None, None]]])
    event = decode_body(body)
    assert isinstance(event, Batch)
    result = VALIDATOR.validate_batch(event.readings)
    assert result.valid == [("s", "gauge", 1_700_000_000_000_000_005, 1.5, None, None)]
