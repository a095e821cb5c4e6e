"""The read API against a plain-table reference: any mix of inserts, resends, late readings
and compactions answers read_range and aggregate exactly as one plain SQLite table would."""

from __future__ import annotations

import math
import sqlite3
import struct
from collections.abc import Iterator, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.storage.sqlite import compactor, scan, store

SERIES = (1, 2, 3)
WINDOW = 100
CONFIG = compactor.CompactionConfig(window_ns=WINDOW, grace_ns=10, max_rows=7)
# Two levels: 20-tick head windows into small blocks, merged per closed 100-tick window.
TWO_LEVEL = compactor.CompactionConfig(
    window_ns=20, grace_ns=5, max_rows=7, merge_ns=WINDOW, merge_grace_ns=10
)
# Two levels, and the head's windows compacted three at a time when their 60-tick slot is
# closed (a backlog), up to 15 rows; larger slots window by window.
RUNS = compactor.CompactionConfig(
    window_ns=20,
    grace_ns=5,
    max_rows=7,
    merge_ns=120,
    merge_grace_ns=10,
    run_windows=3,
    run_rows=15,
)
AGGS = ("avg", "min", "max", "sum", "count", "first", "last")


def open_db(path: Path, series: Sequence[int] = SERIES) -> sqlite3.Connection:
    store.migrate(path)
    conn = store.connect(path)
    conn.execute("INSERT INTO devices (id, name, token_hash, created_ns) VALUES (1, 'dev', 'x', 0)")
    conn.executemany(
        "INSERT INTO series (id, device_id, sensor, kind) VALUES (?, 1, ?, 'temperature')",
        [(sid, f"s{sid}") for sid in series],
    )
    return conn


def insert(conn: sqlite3.Connection, rows: Sequence[tuple[int, int, Any]]) -> None:
    """What the writer does: INSERT OR IGNORE into the head, series bookkeeping, one commit."""
    conn.execute("BEGIN IMMEDIATE")
    for sid, ts, value in rows:
        cur = conn.execute(
            "INSERT OR IGNORE INTO readings_head (ts, series_id, value) VALUES (?, ?, ?)",
            (ts, sid, value),
        )
        if cur.rowcount == 1:
            conn.execute(
                "UPDATE series SET "
                "last_value = CASE WHEN last_ts IS NULL OR ?1 >= last_ts THEN ?2 "
                "ELSE last_value END, last_ts = max(coalesce(last_ts, ?1), ?1), "
                "count = count + 1 WHERE id = ?3",
                (ts, value, sid),
            )
    conn.execute("COMMIT")


class Reference:
    """A plain table with the head's column types: what every answer must equal."""

    def __init__(self) -> None:
        self.db = sqlite3.connect(":memory:", isolation_level=None)
        self.db.execute(
            "CREATE TABLE r (series_id INTEGER, ts INTEGER, value, PRIMARY KEY (series_id, ts))"
        )

    def insert(self, rows: Sequence[tuple[int, int, Any]]) -> None:
        self.db.executemany("INSERT OR IGNORE INTO r VALUES (?, ?, ?)", rows)

    def rows(
        self, ids: Sequence[int], since: int | None, until: int | None
    ) -> list[tuple[int, int, Any]]:
        lo = -(2**63) if since is None else since
        hi = 2**63 - 1 if until is None else until
        q = ",".join("?" * len(ids))
        return self.db.execute(
            f"SELECT series_id, ts, value FROM r WHERE series_id IN ({q}) AND ts >= ? "
            f"AND (ts < ? OR ? IS NULL) ORDER BY ts, series_id",
            [*ids, lo, hi, until],
        ).fetchall()

    def aggregate(
        self, ids: Sequence[int], since: int | None, until: int | None, every: int, agg: str
    ) -> list[tuple[int, int, Any]]:
        buckets: dict[tuple[int, int], list[tuple[int, Any]]] = {}
        for sid, ts, value in self.rows(ids, since, until):
            buckets.setdefault((sid, ts - ts % every), []).append((ts, value))
        out = []
        for (sid, bucket), items in sorted(buckets.items()):
            nums = [(ts, v) for ts, v in items if type(v) in (int, float)]
            vals = [v for _, v in nums]
            result: Any = None
            if agg == "count":
                result = len(items)
            elif nums and agg == "avg":
                result = sum(vals) / len(vals)
            elif nums and agg == "sum":
                result = sum(vals)
            elif nums and agg == "min":
                result = min(vals)
            elif nums and agg == "max":
                result = max(vals)
            elif nums and agg == "first":
                result = min(nums, key=lambda x: x[0])[1]
            elif nums and agg == "last":
                result = max(nums, key=lambda x: x[0])[1]
            out.append((sid, bucket, result))
        return out


def exact(rows: Sequence[tuple[int, int, Any]]) -> list[tuple[int, int, type, Any]]:
    return [
        (sid, ts, type(v), struct.pack("<d", v) if type(v) is float else v) for sid, ts, v in rows
    ]


def assert_agg_equal(got: list[tuple[int, int, Any]], want: list[tuple[int, int, Any]]) -> None:
    assert [(s, b) for s, b, _ in got] == [(s, b) for s, b, _ in want]
    for (_, _, g), (_, _, w) in zip(got, want, strict=True):
        if w is None or g is None:
            assert g is w
        else:
            assert math.isclose(g, w, rel_tol=1e-9, abs_tol=1e-6), (g, w)


values = st.one_of(
    st.integers(-(10**6), 10**6),
    st.integers(-(10**5), 10**5).map(lambda n: n / 100),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.booleans(),
    st.sampled_from(["on", "off", "12", ""]),
)
reading = st.tuples(st.sampled_from(SERIES), st.integers(0, 600), values)
op = st.one_of(
    st.tuples(st.just("insert"), st.lists(reading, min_size=1, max_size=25)),
    st.tuples(st.just("resend"), st.integers(0, 10**6)),
    st.tuples(st.just("compact"), st.integers(0, 800), st.integers(1, 6)),
    st.tuples(st.just("drain")),  # every closed window compacted: later resends hit blocks
)


def check_answers(conn: sqlite3.Connection, ref: Reference, ids: Sequence[int]) -> None:
    ranges = [(None, None), (0, 250), (150, 151), (99, 401), (300, None), (None, 120)]
    for since, until in ranges:
        want = ref.rows(ids, since, until)
        assert exact(list(scan.read_range(conn, ids, since, until))) == exact(want)
        assert exact(list(scan.read_range(conn, ids, since, until, order="desc"))) == exact(
            want[::-1]
        )
        assert exact(list(scan.read_range(conn, ids, since, until, limit=5))) == exact(want[:5])
        for every in (1, 7, 50, 100, 200):
            for agg in AGGS:
                got = list(scan.aggregate(conn, ids, since, until, every, agg))  # type: ignore[arg-type]
                assert_agg_equal(got, ref.aggregate(ids, since, until, every, agg))


def check_block_layout(conn: sqlite3.Connection) -> None:
    """A series' blocks never overlap, and every block reading precedes the compaction
    horizon (the writer's duplicate check relies on both)."""
    blocks = conn.execute(
        "SELECT series_id, start_ns, end_ns, last_ts FROM blocks ORDER BY series_id, start_ns"
    ).fetchall()
    for (s1, _, e1, _), (s2, b2, _, _) in pairwise(blocks):
        assert s1 != s2 or e1 <= b2, blocks
    (horizon,) = conn.execute("SELECT below_ns FROM compaction_horizon").fetchone()
    assert horizon > max((last for _, _, _, last in blocks), default=-1)


@settings(max_examples=150)  # three configurations: ~50 examples each
@given(
    st.lists(op, max_size=12),
    st.sampled_from([[1], [1, 2, 3], [3, 2]]),
    st.sampled_from([CONFIG, TWO_LEVEL, RUNS]),
)
def test_answers_match_plain_table(
    tmp_path_factory: pytest.TempPathFactory, ops, ids, config
) -> None:
    path = tmp_path_factory.mktemp("db") / "t.db"
    conn = open_db(path)
    ref = Reference()
    sent: list[tuple[int, int, Any]] = []
    for o in ops:
        if o[0] == "insert":
            rows = list(o[1])
            insert(conn, rows)
            ref.insert(rows)
            sent += rows
        elif o[0] == "resend" and sent:
            # The same readings again, or the same (series, ts) with another value.
            i = o[1] % len(sent)
            again = sent[i : i + 10]
            if o[1] % 2:
                again = [(sid, ts, "changed") for sid, ts, _ in again]
            insert(conn, again)
            ref.insert(again)
        elif o[0] == "compact":
            for _ in range(o[2]):
                compactor.compact_once(conn, o[1], config)
        elif o[0] == "drain":
            while compactor.compact_once(conn, 10**6, config):
                pass
        check_block_layout(conn)
    reader = store.connect(path, readonly=True)
    try:
        check_answers(reader, ref, ids)
    finally:
        reader.close()
        conn.close()


def drain(conn: sqlite3.Connection, now: int, config: compactor.CompactionConfig) -> int:
    """Compaction steps until nothing closed is left in the head."""
    calls = 0
    while compactor.compact_once(conn, now, config):
        calls += 1
        assert calls < 10_000
    return calls


def test_summaries_are_used_for_aligned_buckets(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "t.db")
    rows = [(1, ts, ts % 13 / 4) for ts in range(0, 1000, 3)]
    insert(conn, rows)
    assert drain(conn, 10_000, CONFIG) > 0
    assert conn.execute("SELECT count(*) FROM readings_head").fetchone() == (0,)
    # Break every blob: answers for aligned buckets must still come from the summaries.
    conn.execute("UPDATE blocks SET data = x'00'")
    got = list(scan.aggregate(conn, [1], 0, 1000, 200, "avg"))
    ref = Reference()
    ref.insert(rows)
    assert_agg_equal(got, ref.aggregate([1], 0, 1000, 200, "avg"))
    with pytest.raises(ValueError):
        list(scan.aggregate(conn, [1], 0, 1000, 50, "avg"))  # must decode: blob is broken


def test_resend_after_compaction_is_read_once_and_merged_once(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "t.db")
    insert(conn, [(1, 10, 1.5), (1, 20, 2.5), (2, 10, 7)])
    drain(conn, 1_000, CONFIG)
    insert(conn, [(1, 10, 1.5), (1, 20, 99.0), (1, 30, 3.5)])  # resend, conflicting, late
    want = [(1, 10, 1.5), (2, 10, 7), (1, 20, 2.5), (1, 30, 3.5)]
    assert list(scan.read_range(conn, [1, 2], None, None)) == want
    assert list(scan.aggregate(conn, [1], None, None, 100, "sum")) == [(1, 0, 7.5)]
    drain(conn, 1_000, CONFIG)
    assert conn.execute("SELECT count(*) FROM readings_head").fetchone() == (0,)
    assert conn.execute("SELECT count FROM blocks WHERE series_id = 1").fetchone() == (3,)
    assert list(scan.read_range(conn, [1, 2], None, None)) == want


def test_latest_comes_from_series_table(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "t.db")
    insert(conn, [(1, 10, 1.0), (1, 30, 3.0), (1, 20, 2.0), (2, 5, "on")])
    drain(conn, 1_000, CONFIG)
    assert scan.latest(conn) == [(1, 30, 3), (2, 5, "on")]
    assert scan.latest(conn, [2, 3]) == [(2, 5, "on")]
    assert scan.latest(conn, []) == []


def test_reader_sees_one_snapshot_while_compaction_commits(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    conn = open_db(path)
    insert(conn, [(sid, ts, ts) for sid in SERIES for ts in range(0, 500, 5)])
    reader = store.connect(path, readonly=True)
    it: Iterator[tuple[int, int, Any]] = scan.read_range(reader, list(SERIES), None, None)
    first = next(it)
    drain(conn, 10_000, CONFIG)  # everything moves to blocks while the reader iterates
    rest = list(it)
    assert len([first, *rest]) == 300
    assert len({first, *rest}) == 300
    assert len(list(scan.read_range(reader, list(SERIES), None, None))) == 300


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"order": "up"}, "order"), ({"limit": -1}, "limit")],
)
def test_read_range_rejects_bad_arguments(tmp_path: Path, kwargs: Any, match: str) -> None:
    conn = open_db(tmp_path / "t.db")
    with pytest.raises(ValueError, match=match):
        scan.read_range(conn, [1], None, None, **kwargs)


def test_aggregate_rejects_bad_arguments(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "t.db")
    with pytest.raises(ValueError, match="every_ns"):
        scan.aggregate(conn, [1], None, None, 0, "avg")
    with pytest.raises(ValueError, match="aggregate"):
        scan.aggregate(conn, [1], None, None, 10, "median")  # type: ignore[arg-type]


def test_empty_inputs(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "t.db")
    insert(conn, [(1, 10, 1.0)])
    assert list(scan.read_range(conn, [], None, None)) == []
    assert list(scan.read_range(conn, [1], 20, 10)) == []
    assert list(scan.read_range(conn, [1], None, None, limit=0)) == []
    assert list(scan.aggregate(conn, [1], 11, None, 10, "count")) == []
