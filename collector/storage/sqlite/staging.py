"""A head window too large for one step (more than max_rows rows), compacted in steps.

collector.storage.sqlite.compactor starts it (`begin`) and asks for one step per call: **stage**
copies the next chunk of the window's head rows (a time range of about step_rows rows) into a
per-connection temp table sorted by series, with no write lock; **pack** writes one small
block per series for a slice of series ids, encoding before its write transaction; **delete**
removes the chunk's rows from the head, under the lock. docs/storage.md has the rules.

Crash safety: the state lives in temp tables, which die with the connection; a new one
starts the window again, and every step is idempotent.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import TYPE_CHECKING, Final

from collector.storage.sqlite import blocks as codec
from collector.storage.sqlite.blockwrites import (
    covering_blocks,
    head_block_rows,
    insert_blocks,
    transaction,
    write_head_blocks,
)
from collector.storage.sqlite.store import HEAD

if TYPE_CHECKING:
    from collector.storage.sqlite.compaction_config import CompactionConfig

log = logging.getLogger(__name__)

_STAGE: Final = "temp.compaction_stage"
_STATE: Final = "temp.compaction_state"
_CHUNKS: Final = "temp.compaction_chunks"
# Per-connection work state (temp tables). The window is copied into the stage a chunk
# (a time range of about max_rows head rows) at a time, each chunk sorted by series: keyed
# (chunk, series_id, ts), every copy appends at the B-tree's right edge (a (series_id, ts)
# key measured 2-3x slower: each chunk touches every series' pages). `chunks` records each
# chunk's head row count and series range; the state row says which step is next. A new
# connection (a restart) has none of them and starts the oldest closed window again:
# every step is idempotent.
_TEMP_SCHEMA: Final = (
    f"CREATE TABLE IF NOT EXISTS {_STAGE} (chunk INTEGER NOT NULL, series_id INTEGER NOT NULL, "
    "ts INTEGER NOT NULL, value, PRIMARY KEY (chunk, series_id, ts)) WITHOUT ROWID",
    f"CREATE TABLE IF NOT EXISTS {_STATE} (window_start INTEGER NOT NULL, "
    "step TEXT NOT NULL, cursor INTEGER NOT NULL)",
    f"CREATE TABLE IF NOT EXISTS {_CHUNKS} (lo INTEGER PRIMARY KEY, hi INTEGER NOT NULL, "
    "n INTEGER NOT NULL, min_sid INTEGER, max_sid INTEGER)",
)


def chunk_end(conn: sqlite3.Connection, cursor: int, end: int, max_rows: int) -> int:
    """Timestamp bound after about `max_rows` head rows from `cursor` (at most `end`)."""
    row = conn.execute(
        f"SELECT ts FROM {HEAD} WHERE ts >= ? AND ts < ? ORDER BY ts LIMIT 1 OFFSET ?",
        (cursor, end, max_rows),
    ).fetchone()
    if row is None:
        return end
    ts: int = row[0]
    return max(ts, cursor + 1)  # many rows on one timestamp: take them all


def ensure_tables(conn: sqlite3.Connection) -> None:
    """Create this connection's temp tables if they are not there yet."""
    if not _has_temp_tables(conn):
        for statement in _TEMP_SCHEMA:
            conn.execute(statement)  # not executescript: it would commit the caller's work


def current(conn: sqlite3.Connection) -> tuple[int, str, int] | None:
    """(window start, next step, cursor) of the window in progress, or None."""
    row: tuple[int, str, int] | None = conn.execute(
        f"SELECT window_start, step, cursor FROM {_STATE}"
    ).fetchone()
    return row


def begin(conn: sqlite3.Connection, start: int) -> None:
    """Start the steps of the window at `start` (its first step: stage)."""
    _clear_state(conn)
    conn.execute(f"INSERT INTO {_STATE} VALUES (?, 'stage', ?)", (start, start))


def step_unlocked(
    conn: sqlite3.Connection, state: tuple[int, str, int], config: CompactionConfig
) -> int | None:
    """A stage or pack step of a large window, holding the write lock only to write blocks.

    Staging only reads the head and writes temp tables, which take no lock on the database
    file. A pack step reads its slice of the stage and the blocks it merges into, encodes,
    then writes if those blocks are unchanged; None (redo under the lock) if not.
    """
    start, step, cursor = state
    end = start + config.window_ns
    conn.execute("BEGIN")  # deferred: a read snapshot; temp tables need no lock
    try:
        if step == "stage":
            n, nxt, done = _stage(conn, cursor, end, config.step)
            _advance(conn, start, step, nxt, done)
            conn.execute("COMMIT")
            return max(n, 1)
        rows, nxt, done = _pack_rows(conn, cursor, config)
        existing = covering_blocks(conn, start, rows, config)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    out = head_block_rows(start, end, rows, config.merge_ns, existing)
    with transaction(conn):
        if covering_blocks(conn, start, rows, config) != existing:
            return None
        insert_blocks(conn, out)
        _advance(conn, start, step, nxt, done)
    return max(len(rows), 1)


def step_locked(
    conn: sqlite3.Connection, state: tuple[int, str, int], config: CompactionConfig
) -> int:
    """The next step of the window in progress, inside the caller's write transaction."""
    start, step, cursor = state
    end = start + config.window_ns
    n: int
    if step == "stage":
        n, nxt, done = _stage(conn, cursor, end, config.step)
    elif step == "pack":
        rows, nxt, done = _pack_rows(conn, cursor, config)
        if rows:
            write_head_blocks(conn, start, end, rows, config)
        n = len(rows)
    else:
        n, nxt, done = _delete(conn, cursor, end)
    _advance(conn, start, step, nxt, done)
    return max(n, 1)


def _advance(conn: sqlite3.Connection, start: int, step: str, nxt: int, done: bool) -> None:
    """Move a staged window's state to the next chunk or the next kind of step."""
    if not done:
        conn.execute(f"UPDATE {_STATE} SET cursor = ?", (nxt,))
    elif step == "stage":
        conn.execute(f"UPDATE {_STATE} SET step = 'pack', cursor = ?", (-(2**63),))
    elif step == "pack":
        conn.execute(f"UPDATE {_STATE} SET step = 'delete', cursor = ?", (start,))
    else:
        # Only the state row: emptying the stage (a whole window's rows) would hold the
        # write lock this transaction has for as long again as a step (measured 136 ms for
        # a 1.2M-row window); `discard` does it with no lock held.
        conn.execute(f"DELETE FROM {_STATE}")
        log.debug("compacted window start_ns=%d", start)


def discard(conn: sqlite3.Connection) -> None:
    """Empty the stage of a finished window. Outside a write transaction (temp tables take
    no lock on the database file); with no window in progress only."""
    if conn.execute(f"SELECT 1 FROM {_CHUNKS} LIMIT 1").fetchone() is not None:
        _clear_state(conn)


def forget_staged_window(conn: sqlite3.Connection) -> None:
    """Start a window part-way through compaction again from its first step (retention
    deleted head rows: the delete step's row counts assume only the writer changed the
    head since staging)."""
    if _has_temp_tables(conn):
        _clear_state(conn)


def _has_temp_tables(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM temp.sqlite_master WHERE name IN "
        "('compaction_stage', 'compaction_state', 'compaction_chunks')"
    ).fetchone()
    return bool(row[0] == len(_TEMP_SCHEMA))


def _clear_state(conn: sqlite3.Connection) -> None:
    for table in (_STATE, _STAGE, _CHUNKS):
        conn.execute(f"DELETE FROM {table}")


def _stage(conn: sqlite3.Connection, cursor: int, end: int, max_rows: int) -> tuple[int, int, bool]:
    """Copy the next chunk of the window's head rows into the series-ordered stage."""
    bound = chunk_end(conn, cursor, end, max_rows)
    n = conn.execute(
        f"INSERT INTO {_STAGE} SELECT ?, series_id, ts, value FROM {HEAD} "
        "WHERE ts >= ? AND ts < ? ORDER BY series_id, ts",
        (cursor, cursor, bound),
    ).rowcount
    conn.execute(
        f"INSERT INTO {_CHUNKS} SELECT ?, ?, ?, min(series_id), max(series_id) FROM {_STAGE} "
        "WHERE chunk = ?",
        (cursor, bound, n, cursor),
    )
    return n, bound, bound >= end


def _pack_rows(
    conn: sqlite3.Connection, cursor: int, config: CompactionConfig
) -> tuple[list[tuple[int, int, codec.Value]], int, bool]:
    """The staged rows of the next slice of series ids (about `step` of them), in (series,
    ts) order; the next cursor; whether this was the last slice.

    The slice width assumes readings spread evenly over the window's series ids.
    """
    total, lo, hi = conn.execute(
        f"SELECT sum(n), min(min_sid), max(max_sid) FROM {_CHUNKS}"
    ).fetchone()
    if not total:
        return [], cursor, True
    cursor = max(cursor, lo)
    bound = cursor + max(1, (hi - lo + 1) * config.step // total)
    rows: list[tuple[int, int, codec.Value]] = conn.execute(
        f"SELECT series_id, ts, value FROM {_STAGE} WHERE chunk IN (SELECT lo FROM {_CHUNKS}) "
        "AND series_id >= ? AND series_id < ? ORDER BY series_id, ts",
        (cursor, bound),
    ).fetchall()
    return rows, bound, bound > hi


def _delete(conn: sqlite3.Connection, cursor: int, end: int) -> tuple[int, int, bool]:
    """Delete the next chunk of the window's head rows that are now in blocks.

    Rows not in the stage arrived late, after their part of the window was staged: they
    stay in the head and a later call merges them into the block. A chunk whose head row
    count is what was staged has no such rows and is deleted as a plain range.
    """
    chunk = conn.execute(
        f"SELECT lo, hi, n FROM {_CHUNKS} WHERE lo >= ? ORDER BY lo LIMIT 1", (cursor,)
    ).fetchone()
    if chunk is None:
        return 0, end, True
    lo, hi, staged = chunk
    where = "ts >= ?1 AND ts < ?2"
    (now_in_head,) = conn.execute(f"SELECT count(*) FROM {HEAD} WHERE {where}", (lo, hi)).fetchone()
    if now_in_head != staged:
        where += (
            f" AND EXISTS (SELECT 1 FROM {_STAGE} AS s WHERE s.chunk = ?1 "
            f"AND s.series_id = {HEAD}.series_id AND s.ts = {HEAD}.ts)"
        )
    n: int = conn.execute(f"DELETE FROM {HEAD} WHERE {where}", (lo, hi)).rowcount
    return n, hi, hi >= end
