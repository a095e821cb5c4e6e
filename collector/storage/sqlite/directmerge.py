"""A backlog's closed merge window (an hour) compacted straight from the head into its final
blocks, with no small blocks and no merge.

When: the compactor's oldest settled head window lies in a merge window that is closed the
way a merge closes (merge_grace_ns after its end), whose windows have all settled, and that
holds no block yet (collector.storage.sqlite.compactor._direct_hour). That is a backlog:
devices replaying their spools after an outage, a migration, a load test with device clocks
in the past. Live windows never qualify: they are compacted as they close, so their hour
has small blocks long before it closes as a merge.

Why: the two levels read every reading into Python twice (head rows into small blocks,
then small blocks into the hour's block) and write it to the file three times. Here it is
read once and encoded once (bench.bench_compaction, docs/benchmarks-history.md).

How, one bounded step per call:
    read    the next slice of the hour's head rows (at most run_rows, in a read
            transaction, no write lock), kept in this process's memory as columns
            sorted by series (collector.storage.sqlite.slicecolumns; ~17 bytes per
            reading of numbers);
    write   one final block per series for a slice of series (about merge_step
            readings), encoded before its write turn, which checks that no other block
            starts in the hour for those series;
    delete  one read slice's head rows, under the lock: a range DELETE whose row count
            must equal what was read; a late reading that arrived for the slice meanwhile
            makes it differ, and then exactly the rows read are deleted, one by one (the
            late ones stay in the head and merge into their block later).
More than direct_max_rows readings, or a block found in the hour for a written series
(another compactor): the attempt is dropped and the hour takes the two levels.

Crash safety: the state lives in this process (the head keeps every reading until its
block is written): a crash loses the state only. The hour then has some blocks, so the
window path compacts the rest, merging into the blocks that exist (blockwrites.
covering_blocks), and a reading is never lost or stored twice. A token in a temp table ties
the state to its connection: a new connection (after a restart, or a reused id()) has none.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from collector.storage.sqlite import blocks as codec
from collector.storage.sqlite import staging
from collector.storage.sqlite.blockwrites import (
    block_row,
    column_block_row,
    insert_blocks,
    transaction,
)
from collector.storage.sqlite.pagefill import page_order
from collector.storage.sqlite.slicecolumns import SeriesReadings, SliceColumns
from collector.storage.sqlite.store import BLOCKS, HEAD

if TYPE_CHECKING:
    from collector.storage.sqlite.compaction_config import CompactionConfig

log = logging.getLogger(__name__)

_TOKEN: Final = "temp.direct_merge"
_FLOATS: Final = {float}
_SKIP: Final = "temp.direct_merge_skip"


@dataclass
class Hour:
    """A merge window in progress: what was read, what is written, what is deleted."""

    token: int
    start: int
    end: int
    cursor: int  # next timestamp to read
    parts: list[tuple[int, int, int]] = field(default_factory=list)  # (lo, hi, rows read)
    slices: list[SliceColumns | None] = field(default_factory=list)  # what each part read
    series: dict[int, SeriesReadings] = field(default_factory=dict)
    total: int = 0
    to_write: list[int] | None = None  # series ids left to write, once all is read
    written: int = 0  # series written
    deleted_parts: int = 0


_HOURS: dict[int, Hour] = {}


def current(conn: sqlite3.Connection) -> Hour | None:
    """The merge window this connection is compacting directly, or None."""
    hour = _HOURS.get(id(conn))
    if hour is None:
        return None
    if _token(conn) != hour.token:  # another connection that reused the id
        del _HOURS[id(conn)]
        return None
    return hour


def begin(conn: sqlite3.Connection, start: int, end: int) -> Hour:
    """Start compacting [start, end) directly (outside a transaction)."""
    conn.execute(f"CREATE TABLE IF NOT EXISTS {_TOKEN} (token INTEGER NOT NULL)")
    token = int.from_bytes(os.urandom(7), "little")
    conn.execute(f"DELETE FROM {_TOKEN}")
    conn.execute(f"INSERT INTO {_TOKEN} VALUES (?)", (token,))
    hour = _HOURS[id(conn)] = Hour(token, start, end, start)
    log.debug("compacting a backlog's merge window directly start_ns=%d", start)
    return hour


def skipped(conn: sqlite3.Connection, start: int) -> bool:
    """Whether this connection dropped a direct attempt at the merge window at `start`."""
    if not _has_table(conn, "direct_merge_skip"):
        return False
    row = conn.execute(f"SELECT 1 FROM {_SKIP} WHERE start_ns = ?", (start,)).fetchone()
    return row is not None


def forget(conn: sqlite3.Connection) -> None:
    """Drop the attempt in progress, if any (retention deleted head rows: the delete
    step's counts assume only the writer changed the head since the read)."""
    _HOURS.pop(id(conn), None)


def step(conn: sqlite3.Connection, hour: Hour, config: CompactionConfig) -> int:
    """The next step of a direct merge window; returns the readings it handled (>= 1)."""
    if hour.to_write is None:
        return _read(conn, hour, config)
    if hour.to_write:
        return _write(conn, hour, config)
    return _delete(conn, hour)


def _read(conn: sqlite3.Connection, hour: Hour, config: CompactionConfig) -> int:
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")  # deferred: a read snapshot, no write lock
    try:
        bound = staging.chunk_end(conn, hour.cursor, hour.end, config.run_rows)
        rows: list[tuple[int, int, codec.Value]] = conn.execute(
            f"SELECT series_id, ts, value FROM {HEAD} WHERE ts >= ? AND ts < ?",
            (hour.cursor, bound),
        ).fetchall()
    finally:
        if own:
            conn.execute("COMMIT")
    n = len(rows)
    hour.parts.append((hour.cursor, bound, n))
    hour.total += n
    hour.cursor = bound
    if hour.total > config.direct_max_rows:
        _drop(conn, hour, "more readings than direct_max_rows")
        return max(n, 1)
    part = SliceColumns(rows) if rows else None
    del rows  # the tuples go before the next slice is read
    hour.slices.append(part)
    if part is not None:
        series = hour.series
        for k, sid in enumerate(part.sids):
            held = series.get(sid)
            if held is None:
                held = series[sid] = SeriesReadings()
            held.add(part, k)
    if bound >= hour.end:
        hour.to_write = sorted(hour.series, reverse=True)  # popped from the end: ascending
    return max(n, 1)


def _write(conn: sqlite3.Connection, hour: Hour, config: CompactionConfig) -> int:
    todo = hour.to_write
    assert todo
    sids: list[int] = []
    n = 0
    while todo and n < config.merge_step:
        sid = todo.pop()
        sids.append(sid)
        n += len(hour.series[sid])
    out = []
    for sid in sids:
        held = hour.series.pop(sid)
        hour.written += 1
        ts = held.timestamps()
        column = held.column()
        if column is not None:
            out.append(column_block_row(sid, hour.start, hour.end, ts, column))
        else:
            out.append(block_row(sid, hour.start, hour.end, ts.tolist(), held.values()))
    out = page_order(out, conn.execute("PRAGMA page_size").fetchone()[0])
    with transaction(conn):
        found = conn.execute(
            f"SELECT 1 FROM {BLOCKS} WHERE series_id >= ? AND series_id <= ? "
            "AND start_ns >= ? AND start_ns < ? LIMIT 1",
            (sids[0], sids[-1], hour.start, hour.end),
        ).fetchone()
        if found is None:
            insert_blocks(conn, out)
    if found is not None:
        _drop(conn, hour, "another compactor wrote blocks in it")
    return max(n, 1)


def _delete(conn: sqlite3.Connection, hour: Hour) -> int:
    lo, hi, read = hour.parts[hour.deleted_parts]
    try:
        with transaction(conn):
            n = conn.execute(f"DELETE FROM {HEAD} WHERE ts >= ? AND ts < ?", (lo, hi)).rowcount
            if n != read:
                raise _HeadChanged
    except _HeadChanged:
        # Late readings arrived for this slice after it was read: delete the rows read.
        with transaction(conn):
            part = hour.slices[hour.deleted_parts]
            conn.executemany(
                f"DELETE FROM {HEAD} WHERE ts = ? AND series_id = ?",
                part.rows() if part is not None else [],
            )
    hour.slices[hour.deleted_parts] = None  # its memory goes
    hour.deleted_parts += 1
    if hour.deleted_parts == len(hour.parts):
        _HOURS.pop(id(conn), None)
        log.debug(
            "compacted a merge window directly start_ns=%d readings=%d series=%d",
            hour.start,
            hour.total,
            hour.written,
        )
    return max(read, 1)


class _HeadChanged(Exception):
    """A slice's head rows are not the ones read."""


def _drop(conn: sqlite3.Connection, hour: Hour, why: str) -> None:
    """Give up the direct attempt at this hour; it takes the two levels."""
    _HOURS.pop(id(conn), None)
    conn.execute(f"CREATE TABLE IF NOT EXISTS {_SKIP} (start_ns INTEGER PRIMARY KEY)")
    conn.execute(f"INSERT OR IGNORE INTO {_SKIP} VALUES (?)", (hour.start,))
    log.info("merge window compacted in two levels instead start_ns=%d reason=%s", hour.start, why)


def _token(conn: sqlite3.Connection) -> int | None:
    if not _has_table(conn, "direct_merge"):
        return None
    row = conn.execute(f"SELECT token FROM {_TOKEN}").fetchone()
    return None if row is None else int(row[0])


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM temp.sqlite_master WHERE name = ?", (name,)).fetchone()
    return row is not None
