"""Series groups (GBATCH, protocol v1.2) on the collector's hot path: a reading's fate does not
depend on the form it travelled in.

Two properties over random batches of valid and invalid readings:
* a GBATCH prepares to exactly the PreparedBatch of its expanded readings (same rows in the
  same order, same rejects and dead letters), so the writer and storage see no difference;
* the row form of a batch and the grouped form the agent makes of it (`wire.group_readings`)
  store the same rows and reject the same readings with the same (code, path, message),
  once the grouped form's reject indexes are mapped back through `order`.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from collector.ingest.prepare import Ingest, PreparedBatch
from schemas import wire
from schemas.readings import ReadingValidator

RECV = 1_800_000_000_000_000_000
INGEST = Ingest(ReadingValidator())

# Few choices per field, so that readings share series and groups form; each list mixes
# valid and invalid values, so every reject code of a group member can come up.
SENSORS = ["air", "pump/flow", "bad sensor", 7]
KINDS = ["temperature", "humidity", "gps", "counter", "state", "text", "gauge", "nokind", 1]
UNITS = [None, "C", "F", "%", "K", "x", "a-very-long-free-unit", 5]
TAGS: list[object] = [
    None,
    {},
    {"site": "north"},
    {"site": "north", "bench": "2"},
    {"bad key": "v"},
    {"k": "x" * 300},
    {"k": 3},
    "not-a-map",
]
TS = st.one_of(
    st.integers(min_value=0, max_value=3_000),
    st.sampled_from([-1, 2**63, 2**63 - 1, 1.5, "noon", None]),
)
VALUES = st.one_of(
    st.floats(min_value=-400, max_value=200),
    st.sampled_from([float("nan"), float("inf"), 1e308, -1e308]),
    st.integers(min_value=-5, max_value=150),
    st.sampled_from([2**63, -(2**63) - 1]),
    st.booleans(),
    st.sampled_from(["open", "x" * 1100, ""]),
    st.fixed_dictionaries({"lat": st.floats(-100, 100), "lon": st.floats(-200, 200)}),
    st.sampled_from([{"lat": 1.0}, {"lat": 1.0, "lon": 2.0, "speed": 3.0}, {"lat": "n", "lon": 1}]),
    st.none(),
)


# Mostly valid readings of a few series: their groups take the column path, unless one
# member's value or ts is bad (then the group's members are validated as readings).
PLAUSIBLE: list[tuple[str, list[object], st.SearchStrategy[object]]] = [
    ("temperature", [None, "C", "F"], st.floats(-50, 50) | st.integers(-50, 50)),
    ("humidity", ["%", None], st.floats(0, 100)),
    ("counter", [None, "pkt"], st.integers(0, 10**6)),
    ("state", [None], st.booleans()),
    ("gps", [None], st.fixed_dictionaries({"lat": st.floats(-90, 90), "lon": st.just(2.5)})),
    ("text", [None], st.text(max_size=5)),
]


@st.composite
def plausible_reading(draw: st.DrawFn) -> object:
    kind, units, values = draw(st.sampled_from(PLAUSIBLE))
    bad = draw(st.integers(0, 30)) == 0
    return [
        draw(st.sampled_from(["air", "pump/flow"])),
        kind,
        draw(TS if bad else st.integers(0, 3_000)),
        draw(VALUES if bad else values),
        draw(st.sampled_from(units)),
        draw(st.sampled_from([None, {"site": "north"}])),
    ]


@st.composite
def wire_reading(draw: st.DrawFn) -> object:
    if draw(st.booleans()):
        return draw(plausible_reading())
    if draw(st.integers(0, 40)) == 0:
        return draw(st.sampled_from([[1, 2], "reading", None, ["a", "gauge", 1, 2.0, None]]))
    return [
        draw(st.sampled_from(SENSORS)),
        draw(st.sampled_from(KINDS)),
        draw(TS),
        draw(VALUES),
        draw(st.sampled_from(UNITS)),
        draw(st.sampled_from(TAGS)),
    ]


BATCHES = st.lists(wire_reading(), max_size=60)


def _rows(b: PreparedBatch) -> Counter[tuple[object, ...]]:
    return Counter(zip(b.keys, b.ts, b.values, strict=True))


def _fates(b: PreparedBatch, order: list[int] | None = None) -> dict[int, tuple[object, ...]]:
    """Original index -> (code, path, message, raw, reading) of every rejected reading."""
    out: dict[int, tuple[object, ...]] = {}
    for r, d in zip(b.rejects, b.dead_letters, strict=True):
        assert d.index == r.index
        i = r.index if order is None else order[r.index]
        out[i] = (r.code, r.path, r.message, d.raw, d.reading, d.code, d.path, d.message)
    return out


@given(BATCHES)
def test_gbatch_prepares_to_the_batch_of_its_expanded_readings(readings: list[object]) -> None:
    g = wire.group_readings(readings)
    grouped = INGEST.prepare(9, g.rows, RECV, g.groups)
    expanded = INGEST.prepare(9, wire.expand_groups(g.rows, g.groups), RECV)
    assert grouped == expanded


@given(BATCHES, st.integers(1, 3))
def test_row_and_grouped_forms_store_and_reject_the_same(
    readings: list[object], min_group: int
) -> None:
    row = INGEST.prepare(3, readings, RECV)
    g = wire.group_readings(readings, min_group=min_group)
    assert sorted(g.order) == list(range(len(readings)))
    grouped = INGEST.prepare(3, g.rows, RECV, g.groups)
    assert _rows(grouped) == _rows(row)
    assert grouped.valid_count == row.valid_count
    assert grouped.scalar_rows == row.scalar_rows
    assert sorted(grouped.composite_sizes) == sorted(row.composite_sizes)
    assert _fates(grouped, g.order) == _fates(row)
    # Within one stored series the readings keep their order (of a duplicate (series, ts),
    # the first is the one stored, in either form).
    for key in set(row.keys):
        if not _mixed_heads(readings, key):
            assert _series(grouped, key) == _series(row, key)


def _series(b: PreparedBatch, key: tuple[str, str, str, str, str]) -> list[tuple[object, ...]]:
    return [(t, v) for k, t, v in zip(b.keys, b.ts, b.values, strict=True) if k == key]


def _mixed_heads(readings: list[object], head: tuple[str, str, str, str, str]) -> bool:
    """True when readings of one stored series travelled under different wire heads (unit
    nil and the default unit, tags nil and {}): only their relative order may change."""
    heads = {
        (repr(r[4]), repr(r[5]))
        for r in readings
        if type(r) is list and len(r) == 6 and r[0] == head[0] and r[1] == head[2]
    }
    return len(heads) > 1


def test_an_all_valid_group_takes_the_column_path_and_matches_rows() -> None:
    ts = list(range(1_000, 1_100))
    group = ["air", "temperature", None, {"site": "n"}, ts, [20.0 + i % 7 for i in range(100)]]
    assert INGEST.validator.validate_groups([group])[0] is not None
    b = INGEST.prepare(1, [], RECV, [group])
    assert b.valid_count == 100 and b.rejects == ()
    assert set(b.keys) == {("air", "", "temperature", "C", '{"site":"n"}')}
    assert b.ts == ts
    assert b == INGEST.prepare(1, wire.expand_groups([], [group]), RECV)


def test_one_bad_member_rejects_that_member_only_with_its_batch_index() -> None:
    rows = [["door", "state", 5, True, None, None]]
    group = ["hum", "humidity", "%", None, [1, 2, 3], [50.0, 101.0, 40]]
    assert INGEST.validator.validate_groups([group]) == [None]
    b = INGEST.prepare(1, rows, RECV, [group])
    assert b.valid_count == 3
    assert [(r.index, r.code, r.path, r.message) for r in b.rejects] == [
        (2, "out_of_range", "value", "Input should be less than or equal to 100")
    ]
    assert b.dead_letters[0].reading == '["hum", "humidity", 2, 101.0, "%", null]'
    assert Counter(b.values) == Counter([True, 50.0, 40.0])


def test_composite_groups_expand_to_field_rows_after_scalars() -> None:
    group = ["truck", "gps", None, None, [7, 8], [{"lat": 1.5, "lon": 2}, {"lon": 3, "lat": 4}]]
    b = INGEST.prepare(1, [["t", "gauge", 1, 2, None, None]], RECV, [group])
    assert b.scalar_rows == 1 and b.composite_sizes == [2, 2]
    assert [(k[1], t, v) for k, t, v in zip(b.keys, b.ts, b.values, strict=True)][1:] == [
        ("lat", 7, 1.5),
        ("lon", 7, 2.0),
        ("lat", 8, 4.0),
        ("lon", 8, 3.0),
    ]
