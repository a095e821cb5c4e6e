"""`bench.bench_compaction --interleaved` compacts as a live collector does: each window once.

Counted, never timed: with the clock at the newest reading (`compact_as_live`) no head window
is compacted before all its readings are in, so no block is rewritten with late readings
(decode + re-encode); with the clock a merge grace ahead of the data, as the benchmark had it,
one window in five was, which cost ~0.25 µs per reading the live collector does not spend.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench import bench_compaction
from collector.storage.sqlite import blockwrites, compactor, store
from collector.storage.sqlite.store import BLOCKS, HEAD

S = 10**9
DEVICES = 2  # 16 series
HOURS = 1.5  # a merge happens while the next hour's windows are compacted


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    path = tmp_path / "c.db"
    store.migrate(path)
    c = store.connect(path, synchronous="OFF")
    yield c
    c.close()


def _rewrites(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch, after: Callable[[int], object]
) -> tuple[int, int]:
    """(blocks rewritten with late head readings, readings filled) for one interleaved fill."""
    rewrites = 0
    merge = blockwrites.merge_readings

    def counted(*args: object) -> object:
        nonlocal rewrites
        rewrites += 1
        return merge(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(blockwrites, "merge_readings", counted)
    n = bench_compaction._fill(conn, DEVICES, HOURS, after)
    return rewrites, n


def test_live_clock_compacts_each_window_once(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps: list[int] = []
    rewrites, n = _rewrites(
        conn, monkeypatch, lambda end: steps.append(bench_compaction.compact_as_live(conn, end))
    )
    assert rewrites == 0
    # The first hour is merged into one block per series, the half hour after it is in
    # small blocks (its last window still in the head).
    hour = bench_compaction.T0_NS
    merged = conn.execute(
        f"SELECT count(*) FROM {BLOCKS} WHERE start_ns = ? AND end_ns = ?",
        (hour, hour + compactor.MERGE_NS),
    ).fetchone()[0]
    assert merged == DEVICES * 8
    in_blocks, head = (
        conn.execute(f"SELECT coalesce(sum(count), 0) FROM {BLOCKS}").fetchone()[0],
        conn.execute(f"SELECT count(*) FROM {HEAD}").fetchone()[0],
    )
    assert in_blocks + head == n
    assert sum(steps) > 0


def test_clock_ahead_of_the_data_rewrites_windows(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the benchmark measured before: windows compacted half full, then rewritten."""

    def ahead(end_ns: int) -> None:
        while compactor.compact_once(conn, end_ns + compactor.MERGE_GRACE_NS + S):
            pass

    rewrites, _n = _rewrites(conn, monkeypatch, ahead)
    # One window in five (those across a five-minute transaction's end) per series.
    windows = int(HOURS * 3600) // 120
    assert rewrites == DEVICES * 8 * (windows // 5)
