"""The chunk head (collector.storage.sqlite.headchunks) through the writer and the compactor.

Random batches of out-of-order, duplicate, resent and late readings across chunk and
compaction windows, written by two writers sharing one file (two BatchStores, two
connections: each must notice the other's commits), with compaction steps in between.
After every step the stored set must equal a reference (the first value of each (series,
ts) wins), each reading exactly once and with its type; every batch's accepted/duplicate
counts must be exact.
"""

from __future__ import annotations

import sqlite3
import tempfile
from array import array
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.storage.interface import PreparedBatch, SeriesKey
from collector.storage.sqlite import compactor, devices, headchunks, retention, scan, store
from collector.storage.sqlite.batchstore import BatchStore

S = 10**9
SENSORS = ("a", "b", "c")
# Small windows that do not line up with the chunk windows: chunks get cut.
ODD = compactor.CompactionConfig(window_ns=45 * S, grace_ns=5 * S, max_rows=7, step_rows=3)
ALIGNED = compactor.CompactionConfig(
    window_ns=120 * S, grace_ns=5 * S, max_rows=10_000, merge_ns=600 * S, merge_grace_ns=0
)

VALUE = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from(["007", "on", ""]),
    st.booleans(),
)
READING = st.tuples(
    st.sampled_from(SENSORS),
    st.integers(min_value=0, max_value=400).map(lambda s: s * S // 2),
    VALUE,
)
Step = tuple[str, int, list[tuple[str, int, object]]]
NO_READINGS: st.SearchStrategy[list[tuple[str, int, object]]] = st.just([])
STEP: st.SearchStrategy[Step] = st.one_of(
    st.tuples(st.just("batch"), st.integers(0, 1), st.lists(READING, min_size=1, max_size=12)),
    st.tuples(st.just("resend"), st.integers(0, 1), NO_READINGS),
    st.tuples(st.just("compact"), st.integers(0, 500), NO_READINGS),
)


def _key(sensor: str) -> SeriesKey:
    return (sensor, "", "gauge", "", "{}")


def _stored_value(v: object) -> object:
    return int(v) if type(v) is bool else v  # bools are stored as 0/1


def _batch(seq: int, readings: list[tuple[str, int, object]]) -> PreparedBatch:
    return PreparedBatch(
        seq=seq,
        received_ns=seq,
        keys=[_key(s) for s, _, _ in readings],
        ts=[t for _, t, _ in readings],
        values=[v for _, _, v in readings],  # type: ignore[misc]
        lag_ms=[5] * len(readings),
        scalar_rows=len(readings),
        valid_count=len(readings),
    )


def _everything(conn: sqlite3.Connection) -> dict[tuple[int, int], tuple[type, object]]:
    ids = [sid for (sid,) in conn.execute(f"SELECT id FROM {store.SERIES}")]
    out: dict[tuple[int, int], tuple[type, object]] = {}
    for sid, ts, v in scan.read_range(conn, ids, None, None):
        assert (sid, ts) not in out, "a reading read twice"
        out[(sid, ts)] = (type(v), v)
    return out


def _run(steps: list[Step], config: compactor.CompactionConfig) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.db"
        store.migrate(path)
        setup = store.connect(path)
        dev = devices.add_device(setup, "d1", 0)[0].id
        setup.close()
        writers = [(store.connect(path), BatchStore()), (store.connect(path), BatchStore())]
        maint = store.connect(path)
        ref: dict[tuple[str, int], object] = {}
        sent: list[PreparedBatch] = []
        seq = 0
        for kind, arg, readings in steps:
            if kind == "compact":
                while compactor.compact_once(maint, arg * S // 2, config):
                    pass
            else:
                conn, bs = writers[arg]
                if kind == "resend":
                    if not sent:
                        continue
                    b = sent[len(sent) // 2]  # a batch sent before, same seq
                else:
                    seq += 1
                    b = _batch(seq, readings)
                    sent.append(b)
                new = 0
                for k, ts, v in zip(b.keys, b.ts, b.values, strict=True):
                    if (k[0], ts) not in ref:
                        ref[(k[0], ts)] = _stored_value(v)
                        new += 1
                (out,), _ = bs.store(conn, [(dev, b)])
                assert (out.accepted, out.duplicate) == (new, len(b.ts) - new)
            names = dict(maint.execute(f"SELECT id, sensor FROM {store.SERIES}").fetchall())
            got = {(names[sid], ts): tv for (sid, ts), tv in _everything(maint).items()}
            assert got == {k: (type(v), v) for k, v in ref.items()}
        # Everything into blocks: the same set, nothing left in the head.
        while compactor.compact_once(maint, 10**6 * S, config):
            pass
        assert headchunks.totals(maint) == (0, None)
        names = dict(maint.execute(f"SELECT id, sensor FROM {store.SERIES}").fetchall())
        got = {(names[sid], ts): tv for (sid, ts), tv in _everything(maint).items()}
        assert got == {k: (type(v), v) for k, v in ref.items()}
        for c in (maint, *(w[0] for w in writers)):
            c.close()


@settings(max_examples=60, deadline=None)
@given(st.lists(STEP, min_size=1, max_size=25))
def test_stored_set_equals_the_reference_through_compaction(steps: list[Step]) -> None:
    _run(steps, ODD)


@settings(max_examples=40, deadline=None)
@given(st.lists(STEP, min_size=1, max_size=25))
def test_stored_set_equals_the_reference_with_aligned_windows_and_merges(steps: list[Step]) -> None:
    _run(steps, ALIGNED)


def test_values_keep_their_type_and_chunks_split_at_window_bounds(tmp_path: Path) -> None:
    c = headchunks.CHUNK_NS
    rows = headchunks.chunk_rows(7, [c + S, c - S, 1, 2 * c], ["007", 21.0, 5, None], [1, 2, 3, 4])
    assert [(r[1], r[2], r[3], r[4]) for r in rows] == [
        (0, 1, c - S, 2),
        (c, c + S, c + S, 1),
        (2 * c, 2 * c, 2 * c, 1),
    ]
    assert headchunks.decode_values(rows[0][6]) == [5, 21.0]  # type: ignore[arg-type]
    assert [type(v) for v in headchunks.decode_values(rows[0][6])] == [int, float]  # type: ignore[arg-type]
    assert headchunks.encode_values([1.5, 2.0])[:1] == b"d"
    assert headchunks.encode_values([1, 2])[:1] == b"q"
    assert headchunks.encode_values([1, 2.0])[:1] == b"m"
    assert headchunks.encode_values([2**64 - 1])[:1] == b"m"
    assert headchunks.decode_values(headchunks.encode_values([True, None, "x"])) == [1, None, "x"]
    assert array("q", [1]).itemsize == 8


def test_migration_moves_the_row_head_into_chunks(tmp_path: Path) -> None:
    # A file from before m0006: its head rows must read back the same, and the writer must
    # see them as stored (series.last_ts covers them).
    path = tmp_path / "old.db"
    conn = store.connect(path)
    db = __import__("sqlite_utils").Database(conn)
    store.migrations.apply(db, stop_before="m0006_head_chunks")
    dev = devices.add_device(conn, "d1", 0)[0].id
    conn.execute(
        "INSERT INTO series (id, device_id, sensor, kind) VALUES (1, ?, 'a', 'gauge')", (dev,)
    )
    old = [(121 * S, 1, "007", 3), (2 * S, 1, 21.0, None), (3 * S, 1, 4, 1)]
    conn.executemany(f"INSERT INTO {store.OLD_HEAD} VALUES (?, ?, ?, ?)", old)
    conn.close()
    assert store.migrate(path) == ["m0006_head_chunks"]
    conn = store.connect(path)
    # Lags are kept when every moved row of a series has one (here one is NULL).
    assert headchunks.read_all(conn) == [
        (1, 2 * S, 21.0, None),
        (1, 3 * S, 4, None),
        (1, 121 * S, "007", None),
    ]
    assert conn.execute("SELECT last_ts FROM series WHERE id = 1").fetchone() == (121 * S,)
    assert (
        conn.execute(
            "SELECT name FROM sqlite_master WHERE name IN ('readings_head', 'readings_recent')"
        ).fetchall()
        == []
    )
    (out,), _ = BatchStore().store(conn, [(dev, _batch(1, [("a", 3 * S, 9), ("a", 4 * S, 9)]))])
    assert (out.accepted, out.duplicate) == (1, 1)
    conn.close()


def test_retention_cuts_chunks_at_the_cutoff(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    store.migrate(path)
    conn = store.connect(path)
    dev = devices.add_device(conn, "d1", 0)[0].id
    (out,), _ = BatchStore().store(
        conn, [(dev, _batch(1, [("a", t * S, float(t)) for t in range(0, 130, 10)]))]
    )
    assert out.accepted == 13
    assert retention.apply_retention(conn, 65 * S, batch_rows=1) == (0, 7)
    assert [r[1] // S for r in headchunks.read_all(conn)] == [70, 80, 90, 100, 110, 120]


@pytest.mark.parametrize("other_first", [False, True])
def test_a_second_process_writing_the_same_series_is_noticed(
    tmp_path: Path, other_first: bool
) -> None:
    # The in-order fast path trusts a cached last_ts; another connection's commit must
    # invalidate it (PRAGMA data_version), or its readings would be stored twice.
    path = tmp_path / "t.db"
    store.migrate(path)
    a, b = store.connect(path), store.connect(path)
    dev = devices.add_device(a, "d1", 0)[0].id
    sa, sb = BatchStore(), BatchStore()
    first, second = (sb, b), (sa, a)
    if not other_first:
        first, second = second, first
    first[0].store(first[1], [(dev, _batch(1, [("a", 10 * S, 1.0)]))])
    second[0].store(second[1], [(dev, _batch(2, [("a", 20 * S, 2.0)]))])
    (out,), _ = first[0].store(first[1], [(dev, _batch(3, [("a", 20 * S, 3.0)]))])
    assert (out.accepted, out.duplicate) == (0, 1)
    assert [r[1:3] for r in headchunks.read_all(a)] == [(10 * S, 1.0), (20 * S, 2.0)]
    a.close()
    b.close()
