"""collector.query.readings on real SQLite files: parsing, filters, ranges, aggregates, latest,
tail."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.errors import ConfigError
from collector.query import readings as query
from collector.query.formats import RowWriter, write_rows
from collector.storage.sqlite.series import series_where
from tests.collector.test_query_support import (
    MIN,
    T0,
    Db,
    S,
    read_storage,
    standard_db,
)

NOW = T0 + 3600 * S


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("15m", NOW - 15 * MIN),
        ("-2h", NOW - 2 * 3600 * S),
        ("7d", NOW - 7 * 86_400 * S),
        ("1.5s", NOW - 1_500_000_000),
        ("now", NOW),
        ("@123", 123),
        ("2025-11-24T16:00:00Z", T0),
        ("2025-11-24T16:00:00", T0),
        ("2025-11-24 16:00", T0),
        ("2025-11-24T17:30:00+01:30", T0),
        ("2025-11-24T11:00:00-05:00", T0),
        ("2025-11-24T16:00:00.000000001Z", T0 + 1),
        ("2025-11-24T16:00:00.5Z", T0 + 500_000_000),
        ("2025-11-24", T0 - 16 * 3600 * S),
    ],
)
def test_parse_time_forms(text: str, expected: int) -> None:
    assert query.parse_time(text, option="--since", now_ns=NOW) == expected


@pytest.mark.parametrize(
    "text", ["garbage", "15x", "2025-13-01", "2025-11-24T25:00:00Z", "", "m", "1e5"]
)
def test_parse_time_rejects_garbage_naming_the_option(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^--until: "):
        query.parse_time(text, option="--until", now_ns=NOW)


def test_parse_duration_and_friends() -> None:
    assert query.parse_duration("5m", option="--every") == 5 * MIN
    assert query.parse_duration("250ms", option="--every") == 250_000_000
    for bad in ("0s", "5", "five minutes", "-5m"):
        with pytest.raises(ConfigError, match=r"^--every: "):
            query.parse_duration(bad, option="--every")
    assert query.parse_tag("zone=z1") == ("zone", "z1")
    assert query.parse_tag("site=a=b") == ("site", "a=b")
    with pytest.raises(ConfigError, match=r"^--tag: "):
        query.parse_tag("novalue")
    with pytest.raises(ConfigError, match=r"^--agg: "):
        query.parse_agg("median")
    with pytest.raises(ConfigError, match=r"^--order: "):
        query.parse_order("up")
    with pytest.raises(ConfigError, match=r"^--limit: "):
        query.parse_limit(0)


def test_format_ts_round_trips_through_parse_time() -> None:
    for ns in (0, T0, T0 + 1, T0 + 123_456_789):
        assert query.parse_time(query.format_ts(ns), option="x", now_ns=NOW) == ns
    assert query.format_ts(T0) == "2025-11-24T16:00:00Z"


def test_series_where_builds_parameterised_sql() -> None:
    f = query.Filters(devices=("a*", "b"), kinds=("gps",), tags=(("zone", "z1"),))
    sql, params = series_where(f)
    assert sql.count("GLOB ?") == 2 and "json_each" in sql
    assert params == ["a*", "b", "gps", "zone", "z1"]
    assert series_where(query.Filters()) == ("1", [])


# ---------------------------------------------------------------- series resolution


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Db]:
    d = standard_db(tmp_path / "t.db")
    yield d
    d.close()


def _names(series: list[query.SeriesInfo]) -> list[str]:
    return [f"{s.device}/{s.sensor}{'.' + s.field if s.field else ''}" for s in series]


def test_filters_select_series(db: Db) -> None:
    conn = read_storage(db.path)
    r = query.resolve_series
    assert _names(r(conn, query.Filters(devices=("greenhouse-*",), sensors=("air-*",)))) == [
        "greenhouse-1/air-temp",
        "greenhouse-2/air-temp",
    ]
    assert _names(r(conn, query.Filters(tags=(("zone", "z2"),)))) == ["greenhouse-2/air-temp"]
    assert _names(r(conn, query.Filters(kinds=("gps",)))) == [
        "tracker-1/gps.lat",
        "tracker-1/gps.lon",
    ]
    assert _names(r(conn, query.Filters(kinds=("gps",), fields=("lon",)))) == ["tracker-1/gps.lon"]
    assert _names(r(conn, query.Filters(devices=("pump-?", "nomatch")))) == [
        "pump-1/cycles",
        "pump-1/running",
    ]
    assert r(conn, query.Filters(devices=("GREENHOUSE-1",))) == []  # globs are case-sensitive
    s = r(conn, query.Filters(devices=("greenhouse-1",), sensors=("air-temp",)))[0]
    assert (s.unit, s.tags, s.count, s.first_ts, s.last_ts) == (
        "C",
        {"zone": "z1"},
        10,
        T0,
        T0 + 270 * S,
    )
    conn.close()


# ---------------------------------------------------------------- readings


def _read(
    db: Db, f: query.Filters, since: int | None, until: int | None, **kw: object
) -> list[query.Row]:
    conn = read_storage(db.path)
    try:
        return list(query.readings(conn, query.resolve_series(conn, f), since, until, **kw))  # type: ignore[arg-type]
    finally:
        conn.close()


def test_range_is_since_inclusive_until_exclusive(db: Db) -> None:
    f = query.Filters(devices=("greenhouse-1",), sensors=("air-temp",))
    rows = _read(db, f, T0 + 30 * S, T0 + 120 * S)
    assert [r["ts_ns"] for r in rows] == [T0 + 30 * S, T0 + 60 * S, T0 + 90 * S]
    assert [r["value"] for r in rows] == [20.5, 21.0, 21.5]
    assert rows[0]["ts"] == "2025-11-24T16:00:30Z"
    assert rows[0]["unit"] == "C" and rows[0]["tags"] == {"zone": "z1"}
    assert len(_read(db, f, None, None)) == 10


def test_order_limit_and_interleaving(db: Db) -> None:
    f = query.Filters(sensors=("air-temp",))
    asc = _read(db, f, None, None)
    assert [(r["ts_ns"], r["device"]) for r in asc[:3]] == [
        (T0, "greenhouse-1"),
        (T0, "greenhouse-2"),
        (T0 + 30 * S, "greenhouse-1"),
    ]
    desc = _read(db, f, None, None, order="desc", limit=3)
    assert [(r["ts_ns"], r["device"]) for r in desc] == [
        (T0 + 270 * S, "greenhouse-2"),
        (T0 + 270 * S, "greenhouse-1"),
        (T0 + 240 * S, "greenhouse-2"),
    ]


def test_value_types_per_kind(db: Db) -> None:
    running = _read(db, query.Filters(sensors=("running",)), None, None)
    assert [r["value"] for r in running] == [True, False, True, False]
    cycles = _read(db, query.Filters(sensors=("cycles",)), None, None)
    assert [r["value"] for r in cycles] == [0, 10, 20, 30]
    assert all(type(r["value"]) is int for r in cycles)
    gps = _read(db, query.Filters(kinds=("gps",)), T0, T0 + 1)
    assert [(r["field"], r["value"]) for r in gps] == [("lat", 52.0), ("lon", 13.0)]


def test_windowed_scan_equals_one_scan(db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    f = query.Filters()
    whole = _read(db, f, None, None)
    monkeypatch.setattr(query, "ROWS_PER_SCAN", 3)
    windowed = _read(db, f, None, None)
    assert windowed == whole and len(whole) == 10 * 2 + 5 * 2 + 4 * 2 + 3 * 2
    desc = _read(db, f, None, None, order="desc", limit=7)
    monkeypatch.setattr(query, "ROWS_PER_SCAN", 50_000)
    assert desc == _read(db, f, None, None, order="desc", limit=7)


# ---------------------------------------------------------------- aggregates and latest


def _agg(
    db: Db, f: query.Filters, every: int, agg: str, since: int | None = None
) -> list[tuple[object, ...]]:
    conn = read_storage(db.path)
    try:
        rows = query.aggregates(conn, query.resolve_series(conn, f), since, None, every, agg)
        return [(r["device"], r["ts_ns"], r["value"]) for r in rows]
    finally:
        conn.close()


def test_aggregates_in_epoch_aligned_buckets(db: Db) -> None:
    f = query.Filters(devices=("greenhouse-1",), sensors=("air-temp",))
    # Values 20.0, 20.5, ... 24.5 every 30 s from T0: two per minute.
    assert _agg(db, f, 2 * MIN, "count") == [
        ("greenhouse-1", T0 + k * 2 * MIN, 4) for k in range(2)
    ] + [("greenhouse-1", T0 + 4 * MIN, 2)]
    assert _agg(db, f, MIN, "avg")[0] == ("greenhouse-1", T0, 20.25)
    assert _agg(db, f, MIN, "min")[1] == ("greenhouse-1", T0 + MIN, 21.0)
    assert _agg(db, f, MIN, "max")[1] == ("greenhouse-1", T0 + MIN, 21.5)
    assert _agg(db, f, MIN, "sum")[2] == ("greenhouse-1", T0 + 2 * MIN, 44.5)
    assert _agg(db, f, 5 * MIN, "first") == [("greenhouse-1", T0, 20.0)]
    assert _agg(db, f, 5 * MIN, "last") == [("greenhouse-1", T0, 24.5)]
    # A since inside a bucket cuts the bucket's readings, not the bucket start.
    assert _agg(db, f, 5 * MIN, "count", since=T0 + 60 * S) == [("greenhouse-1", T0, 8)]


def test_latest_per_series(db: Db) -> None:
    conn = read_storage(db.path)
    rows = query.latest(conn, query.resolve_series(conn, query.Filters()))
    got = {(r["device"], r["sensor"], r["field"]): (r["ts_ns"], r["value"]) for r in rows}
    assert got[("greenhouse-2", "air-temp", "")] == (T0 + 270 * S, 25.5)
    assert got[("pump-1", "running", "")] == (T0 + 3 * MIN, False)
    assert got[("tracker-1", "gps", "lat")] == (T0 + 2 * MIN, 52.02)
    assert len(rows) == 8
    recent = query.latest(conn, query.resolve_series(conn, query.Filters()), T0 + 4 * MIN, None)
    assert {r["sensor"] for r in recent} == {"air-temp", "humidity"}
    conn.close()


def test_devices_listing(db: Db) -> None:
    conn = read_storage(db.path)
    rows = query.list_devices(conn, connected={"pump-1"})
    by = {r["device"]: r for r in rows}
    assert by["greenhouse-1"]["readings"] == 15 and by["greenhouse-1"]["series"] == 2
    assert by["tracker-1"]["readings"] == 6
    assert by["pump-1"]["connected"] is True and by["greenhouse-1"]["connected"] is False
    assert by["pump-1"]["last_seen"] == query.format_ts(T0 + 3 * MIN)
    assert query.list_devices(conn)[0]["connected"] is None
    conn.close()


# ---------------------------------------------------------------- tail


def test_tail_sees_only_readings_committed_after_start(db: Db) -> None:
    conn = read_storage(db.path)
    tail = conn.tail(query.Filters(devices=("greenhouse-*", "late-*")))
    assert tail.poll() == []
    db.add("greenhouse-1", "air-temp", "temperature", [(T0 + 600 * S, 30.0)], tags={"zone": "z1"})
    # A device whose clock is behind the others: older timestamps, still new readings.
    db.add("greenhouse-2", "humidity", "humidity", [(T0 + 10 * MIN, 70.0)])
    db.add("late-1", "air-temp", "temperature", [(T0 - 3600 * S, 1.0)])
    db.add("pump-1", "cycles", "counter", [(T0 + 700 * S, 99)])  # filtered out
    rows = tail.poll()
    assert [(r["device"], r["value"]) for r in rows] == [
        ("late-1", 1.0),
        ("greenhouse-1", 30.0),
        ("greenhouse-2", 70.0),
    ]
    assert tail.poll() == []
    db.add("greenhouse-1", "air-temp", "temperature", [(T0 + 601 * S, 31.0)], tags={"zone": "z1"})
    assert [r["value"] for r in tail.poll()] == [31.0]
    conn.close()


# ---------------------------------------------------------------- formats


ROWS: list[query.Row] = [
    {
        "ts": "2025-11-24T16:00:00Z",
        "ts_ns": T0,
        "device": "d",
        "sensor": "t",
        "field": "",
        "kind": "temperature",
        "value": 20.5,
        "unit": "C",
        "tags": {"zone": "z1"},
        "series_id": 1,
    },
    {
        "ts": "2025-11-24T16:00:30Z",
        "ts_ns": T0 + 30 * S,
        "device": "d",
        "sensor": "s",
        "field": "",
        "kind": "state",
        "value": True,
        "unit": "",
        "tags": {},
        "series_id": 2,
    },
]


def _render(fmt: str, rows: list[query.Row] = ROWS) -> str:
    out = io.StringIO()
    assert write_rows(rows, query.READING_COLUMNS, fmt, out) == len(rows)
    return out.getvalue()


def test_table_format_shows_units_and_hides_machine_columns() -> None:
    lines = _render("table").splitlines()
    assert lines[0].split() == ["TS", "DEVICE", "SENSOR", "KIND", "VALUE", "TAGS"]
    assert "20.5 C" in lines[1] and "zone=z1" in lines[1]
    assert lines[2].split()[-1] == "true"
    assert _render("table", []) == "(no rows)\n"


def test_csv_json_jsonl_formats() -> None:
    csv_lines = _render("csv").splitlines()
    assert csv_lines[0] == "ts,device,sensor,field,kind,value,unit,tags,ts_ns,series_id"
    assert (
        csv_lines[1] == f'2025-11-24T16:00:00Z,d,t,,temperature,20.5,C,"{{""zone"":""z1""}}",{T0},1'
    )
    assert csv_lines[2].split(",")[5] == "true"
    assert json.loads(_render("json")) == ROWS
    assert [json.loads(line) for line in _render("jsonl").splitlines()] == ROWS
    assert json.loads(_render("json", [])) == []
    assert _render("csv", []).startswith("ts,device")


def test_row_writer_streams_without_buffering() -> None:
    out = io.StringIO()
    w = RowWriter("jsonl", query.READING_COLUMNS, out)
    w.write(ROWS[0])
    assert out.getvalue().count("\n") == 1  # written before the next row exists
    w.write(ROWS[1])
    w.close()
    table = io.StringIO()
    tw = RowWriter("table", query.READING_COLUMNS, table)
    tw.write(ROWS[0])
    assert table.getvalue().startswith("2025-11-24T16:00:00Z  d  t  temperature  20.5 C  zone=z1")


def test_table_streams_rows_past_its_sizing_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    from collector.query import formats

    monkeypatch.setattr(formats, "TABLE_SAMPLE_ROWS", 1)

    def rows() -> Iterator[query.Row]:
        yield from [ROWS[0], ROWS[1], {**ROWS[0], "device": "a-much-longer-name"}]

    out = io.StringIO()
    assert write_rows(rows(), query.READING_COLUMNS, "table", out) == 3
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and "a-much-longer-name" in lines[3] and "true" in lines[2]
