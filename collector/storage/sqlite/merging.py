"""The compactor's second level: an hour's small blocks merged into one block per series.

`merge_small_blocks` does one step of it (collector.storage.sqlite.compactor.compact_once calls it
once the head has nothing to compact): the oldest closed, settled hour with small blocks, a
slice of series ids at a time. Each step decodes and encodes in a read transaction and
then writes under the lock, checking that the slice's blocks are still the ones it read;
docs/storage.md has the rules.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from typing import TYPE_CHECKING, Final

from collector.storage.sqlite import blocks as codec
from collector.storage.sqlite.activity import MAX_WINDOWS_SKIPPED, Activity
from collector.storage.sqlite.blockwrites import (
    block_row,
    insert_blocks,
    merge_readings,
    transaction,
)
from collector.storage.sqlite.pagefill import page_order
from collector.storage.sqlite.store import BLOCKS, small_blocks

if TYPE_CHECKING:
    from collector.storage.sqlite.compaction_config import CompactionConfig

log = logging.getLogger(__name__)

_MERGE_STATE: Final = "temp.compaction_merge"


def merge_small_blocks(
    conn: sqlite3.Connection, now_ns: int, config: CompactionConfig, activity: Activity | None
) -> int:
    """One step of merging the oldest closed merge window's small blocks, a slice of series
    ids at a time; returns the readings merged (at least 1 while a window is in progress).

    State (window, next series id, last series id, slice width) lives in a temp table; a new
    connection starts the window again, and series already merged have no small block left
    in it, so every step is idempotent.
    """
    m = config.merge_ns
    small = small_blocks(m)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {_MERGE_STATE} (window_start INTEGER NOT NULL, "
        "cursor INTEGER NOT NULL, hi INTEGER NOT NULL, width INTEGER NOT NULL)"
    )
    if not conn.in_transaction:
        # Read and encode with no write lock held; write under it, if nothing changed.
        state = _merge_state(conn) or _start_merge(conn, now_ns, config, small, activity)
        if state is None:
            return 0
        conn.execute("BEGIN")  # deferred: a snapshot for the reads
        try:
            ids, bound, done = _merge_slice(state)
            rows = _slice_blocks(conn, state[0], m, ids)
        finally:
            conn.execute("COMMIT")
        merged = _merged_blocks(state[0], state[0] + m, rows, page_size)
        try:
            with transaction(conn):
                _write_merge(conn, state, config, ids, rows, merged, bound, done)
            return max(merged[2], 1)
        except _BlocksChanged:
            pass  # another compactor moved blocks meanwhile: do the step under the lock
    with transaction(conn):
        state = _merge_state(conn) or _start_merge(conn, now_ns, config, small, activity)
        if state is None:
            return 0
        ids, bound, done = _merge_slice(state)
        rows = _slice_blocks(conn, state[0], m, ids)
        merged = _merged_blocks(state[0], state[0] + m, rows, page_size)
        _write_merge(conn, state, config, ids, rows, merged, bound, done)
    return max(merged[2], 1)


_MergeState = tuple[int, int, int, int]
_BlockRows = list[tuple[int, int, int, int, bytes]]
_Merged = tuple[list[tuple[object, ...]], list[tuple[int]], int]


class _BlocksChanged(Exception):
    """The blocks read before the write transaction are not all there any more."""


def _merge_state(conn: sqlite3.Connection) -> _MergeState | None:
    row = conn.execute(f"SELECT window_start, cursor, hi, width FROM {_MERGE_STATE}")
    state: _MergeState | None = row.fetchone()
    return state


def _merge_slice(state: _MergeState) -> tuple[list[int], int, bool]:
    """The series ids of the next step, the next cursor, and whether the window is done."""
    _start, cursor, hi, width = state
    bound = min(cursor + width, hi + 1)
    return list(range(cursor, bound)), bound, bound > hi


def _slice_blocks(conn: sqlite3.Connection, start: int, m: int, ids: list[int]) -> _BlockRows:
    rows: _BlockRows = conn.execute(
        f"SELECT b.id, b.series_id, b.start_ns, b.end_ns, b.data FROM json_each(?) AS j "
        f"JOIN {BLOCKS} AS b ON b.series_id = j.value AND b.start_ns >= ? AND b.start_ns < ? "
        "ORDER BY b.series_id, b.start_ns",
        (json.dumps(ids), start, start + m),
    ).fetchall()
    return rows


def _write_merge(
    conn: sqlite3.Connection,
    state: _MergeState,
    config: CompactionConfig,
    ids: list[int],
    rows: _BlockRows,
    merged: _Merged,
    bound: int,
    done: bool,
) -> None:
    """Replace the slice's blocks by the merged ones and move the state on; raises
    _BlocksChanged (rolling back) when the slice's blocks are not the ones `rows` holds."""
    start, _cursor, _hi, width = state
    out, stale, n = merged
    (now,) = conn.execute(
        f"SELECT count(*) FROM json_each(?) AS j JOIN {BLOCKS} AS b ON b.series_id = j.value "
        "AND b.start_ns >= ? AND b.start_ns < ?",
        (json.dumps(ids), start, start + config.merge_ns),
    ).fetchone()
    if now != len(rows):
        raise _BlocksChanged
    if conn.executemany(f"DELETE FROM {BLOCKS} WHERE id = ?", stale).rowcount != len(stale):
        raise _BlocksChanged
    insert_blocks(conn, out)
    if done:
        conn.execute(f"DELETE FROM {_MERGE_STATE}")
        log.debug("merged small blocks window start_ns=%d", start)
    else:
        # Aim the next slice at about `merge_step` readings.
        width = max(1, min(width * 4, width * config.merge_step // max(n, 1)))
        conn.execute(f"UPDATE {_MERGE_STATE} SET cursor = ?, width = ?", (bound, width))


def _start_merge(
    conn: sqlite3.Connection,
    now_ns: int,
    config: CompactionConfig,
    small: str,
    activity: Activity | None,
) -> _MergeState | None:
    """State for merging the oldest closed, settled merge window with small blocks."""
    m = config.merge_ns
    cursor = -(2**63)
    for _ in range(MAX_WINDOWS_SKIPPED + 1):
        first = conn.execute(
            f"SELECT start_ns FROM {BLOCKS} WHERE {small} AND start_ns >= ? "
            "ORDER BY start_ns LIMIT 1",
            (cursor,),
        ).fetchone()
        if first is None:
            return None
        start = first[0] - first[0] % m
        if start + m > now_ns - config.merge_grace_ns:
            return None
        if activity is None or activity.merge_settled(start):
            break
        cursor = start + m
    else:
        return None
    if activity is not None:
        activity.merged(start)
    lo, hi = conn.execute(
        f"SELECT min(series_id), max(series_id) FROM {BLOCKS} "
        f"WHERE start_ns >= ? AND start_ns < ? AND {small}",
        (start, start + m),
    ).fetchone()
    state = (start, lo, hi, max(1, config.merge_step * config.window_ns // m))
    conn.execute(f"DELETE FROM {_MERGE_STATE}")
    conn.execute(f"INSERT INTO {_MERGE_STATE} VALUES (?, ?, ?, ?)", state)
    return state


def _merged_blocks(start: int, end: int, rows: _BlockRows, page_size: int) -> _Merged:
    """Each series' blocks in [start, end) as one block: (block rows to insert, in the order
    that fills pages of `page_size` (collector.storage.sqlite.pagefill), ids of the blocks they
    replace, readings merged). Pure: decoding and encoding only."""
    per_series: dict[int, list[tuple[int, int, int, bytes]]] = {}
    for bid, sid, bstart, bend, data in rows:
        per_series.setdefault(sid, []).append((bid, bstart, bend, data))
    out = []
    stale: list[tuple[int]] = []
    n = 0
    for sid, group in per_series.items():
        if len(group) == 1 and group[0][1] == start and group[0][2] == end:
            continue  # already merged
        ts: list[int] = []
        values: list[codec.Value] = []
        for bid, _bstart, _bend, data in group:  # by start: blocks do not overlap
            bts, bvalues = codec.decode(data)
            if ts and bts[0] <= ts[-1]:
                ts, values = merge_readings((ts, values), bts, bvalues)
            else:
                ts += bts
                values += bvalues
            stale.append((bid,))
        n += len(ts)
        out.append(block_row(sid, start, end, ts, values))
    return page_order(out, page_size), stale, n
