"""Queries over compacted storage: block summaries (rollups) answer exactly what raw data does."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from collector.cli import cli
from collector.query import readings as query
from collector.storage.sqlite import compactor, store
from tests.collector.test_query_support import (
    MIN,
    T0,
    Db,
    S,
    read_storage,
)

HOURS = 5
STEP = 10 * S
RAW: dict[str, list[tuple[int, float]]] = {
    "a": [(T0 + i * STEP, 20.0 + (i % 37) * 0.25) for i in range(HOURS * 360)],
    "b": [(T0 + i * STEP + 3 * S, float((i * 7) % 11)) for i in range(HOURS * 360)],
}


def _expected(sensor: str, every: int, agg: str) -> list[tuple[int, float | int]]:
    buckets: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for ts, v in RAW[sensor]:
        buckets[ts - ts % every].append((ts, v))
    out: list[tuple[int, float | int]] = []
    for b in sorted(buckets):
        vals = [v for _, v in buckets[b]]
        results: dict[str, float | int] = {
            "avg": sum(vals) / len(vals),
            "sum": sum(vals),
            "min": min(vals),
            "max": max(vals),
            "count": len(vals),
            "first": vals[0],
            "last": vals[-1],
        }
        result = results[agg]
        out.append((b, result))
    return out


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Db]:
    d = Db(tmp_path / "t.db")
    for sensor, points in RAW.items():
        d.add("dev-1", sensor, "gauge", points)
    yield d
    d.close()


def _compact_all(db: Db) -> None:
    now = T0 + (HOURS + 24) * 3600 * S
    while compactor.compact_once(db.conn, now):
        pass


def _aggs(db: Db, sensor: str, every: int, agg: str) -> list[tuple[object, object]]:
    conn = read_storage(db.path)
    try:
        series = query.resolve_series(conn, query.Filters(sensors=(sensor,)))
        return [
            (r["ts_ns"], r["value"]) for r in query.aggregates(conn, series, None, None, every, agg)
        ]
    finally:
        conn.close()


def test_rollup_answers_equal_raw_answers(db: Db) -> None:
    everies = (MIN, 5 * MIN, 7 * MIN, 3600 * S, 2 * 3600 * S)
    aggs = query.AGGS
    before = {(s, e, a): _aggs(db, s, e, a) for s in RAW for e in everies for a in aggs}
    raw_rows = CliRunner().invoke(cli, ["export", "--db", str(db.path)]).stdout
    _compact_all(db)
    n_blocks = db.conn.execute(f"SELECT count(*) FROM {store.BLOCKS}").fetchone()[0]
    assert db.count_head() == 0 and n_blocks == 2 * HOURS
    for (sensor, every, agg), got in before.items():
        expected = _expected(sensor, every, agg)
        after = _aggs(db, sensor, every, agg)
        assert after == got, (sensor, every, agg)
        assert [(b, pytest.approx(v)) for b, v in expected] == after, (sensor, every, agg)
    assert CliRunner().invoke(cli, ["export", "--db", str(db.path)]).stdout == raw_rows


def test_late_reading_after_compaction_counts_once(db: Db) -> None:
    _compact_all(db)
    # A resend of a compacted reading (same ts, other value) and a genuinely late one.
    ts_dup, v_dup = RAW["a"][10]
    db.add("dev-1", "a", "gauge", [(ts_dup, 999.0), (ts_dup + S, 1000.0)])
    rows = json.loads(
        CliRunner()
        .invoke(
            cli,
            [
                "query",
                "--db",
                str(db.path),
                "--sensor",
                "a",
                "--every",
                "1m",
                "--agg",
                "count",
                "--since",
                f"@{T0}",
                "--until",
                f"@{T0 + 3 * MIN}",
                "--format",
                "json",
            ],
        )
        .stdout
    )
    assert [r["value"] for r in rows] == [6, 7, 6]
    got = CliRunner().invoke(
        cli,
        [
            "query",
            "--db",
            str(db.path),
            "--sensor",
            "a",
            "--since",
            f"@{ts_dup}",
            "--until",
            f"@{ts_dup + 2 * S}",
            "--format",
            "jsonl",
        ],
    )
    assert [json.loads(x)["value"] for x in got.stdout.splitlines()] == [v_dup, 1000.0]
