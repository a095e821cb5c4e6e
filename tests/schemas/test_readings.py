"""schemas.readings: every built-in kind accepts good readings and rejects bad ones with the
right code and field path; batches split into valid readings and rejects."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import readings as R
from schemas.kinds import BUILTIN_KINDS, MAX_TEXT_CHARS
from schemas.readings import ReadingValidator
from schemas.wire import MAX_INT64, Reject

TS = 1_700_000_000_000_000_000


VALIDATOR = ReadingValidator()
REJECT_CODES = {
    v for k, v in vars(R).items() if k.isupper() and not k.startswith("_") and isinstance(v, str)
} - {R.SENSOR_PATTERN, R.TAG_KEY_PATTERN}


@pytest.fixture(scope="module")
def validator() -> ReadingValidator:
    return VALIDATOR


def rd(kind: str, value: object, unit: object = None, tags: object = None) -> list[object]:
    return ["site/sensor-1", kind, TS, value, unit, tags]


# (kind, value, unit) -> the value as validated. Several per kind: edges of every range.
GOOD: list[tuple[str, object, str | None, object]] = [
    ("temperature", 21.5, "C", 21.5),
    ("temperature", 21, None, 21.0),  # nil unit: the default unit (C) and its range
    ("temperature", -273.15, "C", -273.15),
    ("temperature", -459.67, "F", -459.67),
    ("temperature", 0.0, "K", 0.0),
    ("temperature", 1e6, "K", 1e6),
    ("humidity", 0, "%", 0.0),
    ("humidity", 100.0, None, 100.0),
    ("pressure", 1013.25, "hPa", 1013.25),
    ("pressure", 0.0, "Pa", 0.0),
    ("pressure", 14.7, "psi", 14.7),
    ("pressure", 1.0, "bar", 1.0),
    ("pressure", 101.3, "kPa", 101.3),
    ("pressure", 760.0, "mmHg", 760.0),
    ("voltage", -12.0, "V", -12.0),
    ("voltage", 3300, "mV", 3300.0),
    ("voltage", 11.0, "kV", 11.0),
    ("current", -0.5, "A", -0.5),
    ("current", 20, "mA", 20.0),
    ("power", -150.0, "W", -150.0),
    ("power", 2.5, "kW", 2.5),
    ("power", 3.0, "mW", 3.0),
    ("energy", 0, "Wh", 0.0),
    ("energy", 12345.6, "kWh", 12345.6),
    ("energy", 1e9, "J", 1e9),
    ("gps", {"lat": 48.137, "lon": 11.575}, None, {"lat": 48.137, "lon": 11.575}),
    (
        "gps",
        {"lat": -90, "lon": 180, "alt": -1000},
        None,
        {"lat": -90.0, "lon": 180.0, "alt": -1000.0},
    ),
    (
        "gps",
        {"lat": 90.0, "lon": -180.0, "alt": 100000.0},
        None,
        {"lat": 90.0, "lon": -180.0, "alt": 100000.0},
    ),
    ("acceleration", {"x": 0.1, "y": -9.81, "z": 0}, "m/s2", {"x": 0.1, "y": -9.81, "z": 0.0}),
    ("acceleration", {"x": 1, "y": 2, "z": 3}, "g", {"x": 1.0, "y": 2.0, "z": 3.0}),
    ("acceleration", {"x": 1.0, "y": 2.0, "z": 3.0}, None, {"x": 1.0, "y": 2.0, "z": 3.0}),
    ("gauge", -1.7976931348623157e308, None, -1.7976931348623157e308),
    ("gauge", 42, "rpm", 42.0),
    ("counter", 0, None, 0),
    ("counter", MAX_INT64, "packets", MAX_INT64),
    ("state", True, None, True),
    ("state", False, None, False),
    ("event", "", None, ""),
    ("event", "door opened", None, "door opened"),
    ("text", "ü" * MAX_TEXT_CHARS, None, "ü" * MAX_TEXT_CHARS),
]

# (id, reading, code, path)
BAD: list[tuple[str, object, str, str]] = [
    ("temperature below absolute zero C", rd("temperature", -273.16, "C"), "out_of_range", "value"),
    ("temperature below absolute zero F", rd("temperature", -460, "F"), "out_of_range", "value"),
    ("temperature below absolute zero K", rd("temperature", -0.01, "K"), "out_of_range", "value"),
    ("temperature default unit range", rd("temperature", -300.0), "out_of_range", "value"),
    ("temperature unknown unit", rd("temperature", 20.0, "degC"), "bad_unit", "unit"),
    ("temperature NaN", rd("temperature", math.nan, "C"), "not_finite", "value"),
    ("temperature +inf", rd("temperature", math.inf, "K"), "not_finite", "value"),
    ("temperature -inf nil unit", rd("temperature", -math.inf), "not_finite", "value"),
    ("temperature bool", rd("temperature", True, "C"), "wrong_type", "value"),
    ("temperature string", rd("temperature", "21.5", "C"), "wrong_type", "value"),
    ("humidity over 100", rd("humidity", 100.5, "%"), "out_of_range", "value"),
    ("humidity negative", rd("humidity", -1), "out_of_range", "value"),
    ("humidity unit", rd("humidity", 50, "percent"), "bad_unit", "unit"),
    ("pressure negative", rd("pressure", -1.0, "hPa"), "out_of_range", "value"),
    ("pressure unit", rd("pressure", 1.0, "atm"), "bad_unit", "unit"),
    ("voltage NaN", rd("voltage", math.nan, "V"), "not_finite", "value"),
    ("voltage unit", rd("voltage", 1.0, "A"), "bad_unit", "unit"),
    ("current unit", rd("current", 1.0, "V"), "bad_unit", "unit"),
    ("power inf", rd("power", math.inf, "W"), "not_finite", "value"),
    ("power unit", rd("power", 1.0, "Wh"), "bad_unit", "unit"),
    ("energy negative", rd("energy", -0.1, "kWh"), "out_of_range", "value"),
    ("energy unit", rd("energy", 1.0, "W"), "bad_unit", "unit"),
    ("gps lat over 90", rd("gps", {"lat": 90.5, "lon": 0.0}), "out_of_range", "value.lat"),
    ("gps lon under -180", rd("gps", {"lat": 0.0, "lon": -181}), "out_of_range", "value.lon"),
    ("gps alt too high", rd("gps", {"lat": 0, "lon": 0, "alt": 1e6}), "out_of_range", "value.alt"),
    ("gps lat missing", rd("gps", {"lon": 1.0}), "missing_field", "value.lat"),
    (
        "gps extra field",
        rd("gps", {"lat": 1, "lon": 1, "speed": 3}),
        "unknown_field",
        "value.speed",
    ),
    ("gps NaN lon", rd("gps", {"lat": 1, "lon": math.nan}), "not_finite", "value.lon"),
    ("gps scalar", rd("gps", 1.0), "wrong_type", "value"),
    ("gps unit", rd("gps", {"lat": 1, "lon": 1}, "deg"), "bad_unit", "unit"),
    ("gps string field", rd("gps", {"lat": "1", "lon": 1}), "wrong_type", "value.lat"),
    ("acceleration missing z", rd("acceleration", {"x": 1, "y": 1}), "missing_field", "value.z"),
    (
        "acceleration inf",
        rd("acceleration", {"x": 1, "y": math.inf, "z": 1}),
        "not_finite",
        "value.y",
    ),
    ("acceleration unit", rd("acceleration", {"x": 1, "y": 1, "z": 1}, "m/s"), "bad_unit", "unit"),
    ("gauge NaN", rd("gauge", math.nan), "not_finite", "value"),
    ("gauge bool", rd("gauge", False), "wrong_type", "value"),
    ("gauge list", rd("gauge", [1.0]), "wrong_type", "value"),
    ("gauge unit too long", rd("gauge", 1.0, "u" * 17), "bad_unit", "unit"),
    ("gauge unit not a string", rd("gauge", 1.0, 5), "bad_unit", "unit"),
    ("counter negative", rd("counter", -1), "out_of_range", "value"),
    ("counter float", rd("counter", 1.5), "wrong_type", "value"),
    ("counter integral float", rd("counter", 2.0), "wrong_type", "value"),
    ("counter above int64", rd("counter", MAX_INT64 + 1), "out_of_range", "value"),
    ("counter bool", rd("counter", True), "wrong_type", "value"),
    ("state int", rd("state", 1), "wrong_type", "value"),
    ("state string", rd("state", "on"), "wrong_type", "value"),
    ("state unit", rd("state", True, "bool"), "bad_unit", "unit"),
    ("event too long", rd("event", "x" * (MAX_TEXT_CHARS + 1)), "too_long", "value"),
    ("event number", rd("event", 5), "wrong_type", "value"),
    ("text too long", rd("text", "ü" * (MAX_TEXT_CHARS + 1)), "too_long", "value"),
    ("text unit", rd("text", "x", "chars"), "bad_unit", "unit"),
    # Fields shared by every kind.
    ("unknown kind", rd("smell", 1.0), "unknown_kind", "kind"),
    ("kind not a string", ["s", 7, TS, 1.0, None, None], "wrong_type", "kind"),
    ("empty sensor", ["", "gauge", TS, 1.0, None, None], "bad_sensor", "sensor"),
    ("sensor with space", ["a b", "gauge", TS, 1.0, None, None], "bad_sensor", "sensor"),
    ("sensor too long", ["s" * 129, "gauge", TS, 1.0, None, None], "bad_sensor", "sensor"),
    ("sensor not a string", [5, "gauge", TS, 1.0, None, None], "bad_sensor", "sensor"),
    ("negative ts", ["s", "gauge", -1, 1.0, None, None], "bad_timestamp", "ts"),
    ("float ts", ["s", "gauge", 1.5, 1.0, None, None], "bad_timestamp", "ts"),
    ("ts above int64", ["s", "gauge", MAX_INT64 + 1, 1.0, None, None], "bad_timestamp", "ts"),
    ("string ts", ["s", "gauge", "2024-01-01", 1.0, None, None], "bad_timestamp", "ts"),
    ("tag value not a string", rd("gauge", 1.0, None, {"k": 1}), "bad_tags", "tags.k"),
    ("tag key pattern", rd("gauge", 1.0, None, {"1k": "v"}), "bad_tags", "tags.1k.[key]"),
    (
        "too many tags",
        rd("gauge", 1.0, None, {f"k{i}": "v" for i in range(17)}),
        "bad_tags",
        "tags",
    ),
    ("tag value too long", rd("gauge", 1.0, None, {"k": "v" * 257}), "bad_tags", "tags.k"),
    ("tags a list", rd("gauge", 1.0, None, ["k"]), "bad_tags", "tags"),
    ("five elements", ["s", "gauge", TS, 1.0, None], "not_a_reading", ""),
    ("seven elements", ["s", "gauge", TS, 1.0, None, None, None], "not_a_reading", ""),
    ("a map", {"sensor": "s"}, "not_a_reading", ""),
    ("a string", "s,gauge,1,1.0", "not_a_reading", ""),
    ("nil", None, "not_a_reading", ""),
    ("a tuple, not a decoded array", ("s", "gauge", TS, 1.0, None, None), "not_a_reading", ""),
]


def test_tables_cover_every_builtin_kind() -> None:
    names = {k.name for k in BUILTIN_KINDS}
    assert names == {kind for kind, *_ in GOOD}
    assert names <= {r[1] for _, r, *_ in BAD if isinstance(r, list)}


@pytest.mark.parametrize(("kind", "value", "unit", "expected"), GOOD)
def test_builtin_kind_accepts(
    validator: ReadingValidator, kind: str, value: object, unit: str | None, expected: object
) -> None:
    tags = {"site": "greenhouse", "rack.position": "3"}
    result = validator.validate_batch([rd(kind, value, unit, tags)])
    assert result.rejects == []
    assert result.valid == [("site/sensor-1", kind, TS, expected, unit, tags)]
    assert type(result.valid[0][3]) is type(expected)


@pytest.mark.parametrize(("reading", "code", "path"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_builtin_kind_rejects(
    validator: ReadingValidator, reading: object, code: str, path: str
) -> None:
    result = validator.validate_batch([reading])
    assert result.valid == []
    assert len(result.rejects) == 1
    reject = result.rejects[0]
    assert (reject.index, reject.code, reject.path) == (0, code, path)
    assert reject.message


def test_reject_codes_are_the_documented_constants() -> None:
    codes = {R.NOT_A_READING, R.UNKNOWN_KIND, R.BAD_UNIT, R.WRONG_TYPE, R.OUT_OF_RANGE}
    codes |= {R.NOT_FINITE, R.BAD_TIMESTAMP, R.BAD_SENSOR, R.BAD_TAGS, R.MISSING_FIELD}
    codes |= {R.UNKNOWN_FIELD, R.TOO_LONG, R.INVALID}
    assert {code for *_, code, _ in BAD} <= codes


def test_batch_splits_valid_readings_and_rejects(validator: ReadingValidator) -> None:
    batch = [
        rd("temperature", 20.0, "C"),
        rd("humidity", 120.0),
        "junk",
        rd("state", True),
        rd("gps", {"lat": 1.0}),
        rd("counter", 3),
    ]
    result = validator.validate_batch(batch)
    assert result.valid_index == [0, 3, 5]
    assert [v[3] for v in result.valid] == [20.0, True, 3]
    assert result.rejects == [
        Reject(1, "out_of_range", "value", result.rejects[0].message),
        Reject(2, "not_a_reading", "", result.rejects[1].message),
        Reject(4, "missing_field", "value.lon", result.rejects[2].message),
    ]


def test_one_reject_per_reading_even_with_several_faults(validator: ReadingValidator) -> None:
    result = validator.validate_batch([["", "temperature", -1, math.nan, "X", {"1": 2}]])
    assert len(result.rejects) == 1
    assert result.rejects[0].code == "bad_sensor"


def test_empty_batch(validator: ReadingValidator) -> None:
    result = validator.validate_batch([])
    assert (result.valid, result.valid_index, result.rejects) == ([], [], [])


def test_large_batch_keeps_indexes(validator: ReadingValidator) -> None:
    batch = [rd("counter", i if i % 100 else -i - 1) for i in range(10_000)]
    result = validator.validate_batch(batch)
    assert [r.index for r in result.rejects] == list(range(0, 10_000, 100))
    assert len(result.valid) == 9_900
    assert result.valid_index[:3] == [1, 2, 3]


def test_kinds_summary_lists_every_kind(validator: ReadingValidator) -> None:
    summary = R.kinds_summary(validator.kinds)
    assert [s["kind"] for s in summary] == [k.name for k in BUILTIN_KINDS]
    gps = next(s for s in summary if s["kind"] == "gps")
    fields = gps["fields"]
    assert isinstance(fields, list)
    assert [f["name"] for f in fields] == ["lat", "lon", "alt"]


SCALAR = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=12)
)
# Two levels of nesting are enough to reach every branch of validation.
ANY_VALUE = (
    SCALAR
    | st.lists(SCALAR, max_size=7)
    | st.dictionaries(st.text(max_size=6), SCALAR | st.lists(SCALAR, max_size=2), max_size=4)
)
READING_LIKE = st.tuples(
    st.sampled_from(["s/1", "", "a b"]) | st.text(max_size=8) | ANY_VALUE,
    st.sampled_from([k.name for k in BUILTIN_KINDS]) | ANY_VALUE,
    st.integers(-5, 2**64 - 1) | ANY_VALUE,
    ANY_VALUE,
    st.sampled_from([None, "C", "%", "g", "m/s2", "hPa"]) | ANY_VALUE,
    st.none() | st.dictionaries(st.text(max_size=5), st.text(max_size=5) | ANY_VALUE, max_size=3),
).map(list)


@given(st.lists(READING_LIKE | ANY_VALUE, max_size=12))
def test_any_decoded_value_is_accepted_or_rejected_never_raised(batch: list[object]) -> None:
    result = VALIDATOR.validate_batch(batch)
    indexes = result.valid_index + [r.index for r in result.rejects]
    assert sorted(indexes) == list(range(len(batch)))
    assert [r.index for r in result.rejects] == sorted(r.index for r in result.rejects)
    for reject in result.rejects:
        assert reject.code in REJECT_CODES
        assert reject.message
    for i, valid in zip(result.valid_index, result.valid, strict=True):
        assert valid[:3] == tuple(batch[i][:3])  # type: ignore[index]  # a valid one is a list
