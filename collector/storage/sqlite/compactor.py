"""Background compaction and retention, run by the maintenance process
(collector.storage.sqlite.maintainer).

`maintenance(conn, now_ns, activity)` is one bounded step (`compact_once`) with its own
write transaction; the caller decides when to run the next. Steps read and encode before
that transaction where they can, so the ingest writer, another process, keeps committing
meanwhile; the transaction checks that what was read is unchanged, else the step is redone
under the lock.

Two levels. First, the head: a window [k * W, (k + 1) * W) (W = 2 minutes) is closed once it
ends at least the grace period before `now_ns`, and settled once no reading arrived for it
for a few seconds (collector.storage.sqlite.activity; matters for backlogs, whose windows are closed
by the clock while they still fill); the oldest closed, settled window with head readings is
compacted: a window of at most max_rows rows (or, in a backlog, a closed 10-minute slot of
five windows) in one step, a larger one in steps (collector.storage.sqlite.staging: stage a chunk of
its head rows into a per-connection temp table sorted by series, pack one small block per
series for a slice of series ids, delete the staged rows from the head). So the head holds
about two and a half minutes of readings and a live per-series read stays cheap. Second,
the merge: once an hour [h * M, (h + 1) * M) is closed (plus its own grace) and settled,
each series' small blocks in it are replaced by one block, a slice of series per step
(collector.storage.sqlite.merging), which gives the long blocks' ~3 bytes per reading. The head
always comes first. docs/storage.md has the full rules.

Merging and dedup: a late or resent reading lands in the head after its window was
compacted (INSERT OR IGNORE cannot see the block); its window is closed, so a later step
stages it again, decodes the series' block covering the window (its small block, or the
hour's block once merged: a series' blocks never overlap), adds the readings whose
timestamps the block lacks (the block's value wins, as the first INSERT OR IGNORE would
have kept it), and rewrites the block. Readers never see a reading twice meanwhile
(collector.storage.sqlite.scan dedups the same way).

Crash safety: every step is a transaction and the only other state is in temp tables,
which die with the connection; a new connection starts the window (or the merge) again and
every step is idempotent, so a crash at any point leaves each reading readable exactly once.

Retention (collector.storage.sqlite.retention) and giving free pages back (store.reclaim_space) live
beside it; `maintenance` runs the latter once compaction has nothing to do: all at once
while no readings are arriving, else in bounded steps.

This module only moves stored readings; it never inserts new ones and opens no connection.
"""

from __future__ import annotations

import logging
import sqlite3
from operator import itemgetter
from typing import Literal

from collector.storage.sqlite import directmerge, staging, store
from collector.storage.sqlite.activity import MAX_WINDOWS_SKIPPED, Activity
from collector.storage.sqlite.blockwrites import (
    covering_blocks,
    head_block_rows,
    insert_blocks,
    transaction,
    write_head_blocks,
)
from collector.storage.sqlite.compaction_config import (
    DEFAULT_CONFIG,
    GRACE_NS,
    MAX_ROWS_PER_CALL,
    MERGE_GRACE_NS,
    MERGE_NS,
    MERGE_STEP_ROWS,
    RUN_MAX_ROWS,
    RUN_WINDOWS,
    STEP_ROWS,
    WINDOW_NS,
    CompactionConfig,
)
from collector.storage.sqlite.merging import merge_small_blocks
from collector.storage.sqlite.store import BLOCKS, HEAD

# The compaction settings are re-exported: callers configure the compactor through it.
__all__ = [
    "DEFAULT_CONFIG",
    "GRACE_NS",
    "MAX_ROWS_PER_CALL",
    "MERGE_GRACE_NS",
    "MERGE_NS",
    "MERGE_STEP_ROWS",
    "RUN_MAX_ROWS",
    "RUN_WINDOWS",
    "STEP_ROWS",
    "WINDOW_NS",
    "CompactionConfig",
    "compact_once",
    "maintenance",
]

log = logging.getLogger(__name__)


def maintenance(conn: sqlite3.Connection, now_ns: int, activity: Activity | None = None) -> bool:
    """One bounded step (at most MAX_ROWS_PER_CALL rows, one write transaction); True while
    there is more to do. The caller decides how often to call it. With `activity` (fed by
    the writer), windows still receiving readings wait until quiet.
    """
    if compact_once(conn, now_ns, DEFAULT_CONFIG, activity):
        return True
    if not _closed_rows_waiting(conn, now_ns, DEFAULT_CONFIG) and store.reclaim_space(
        conn, at_once=activity is None or activity.quiet()
    ):
        return True
    if activity is not None:
        activity.prune()
    return False


def _closed_rows_waiting(conn: sqlite3.Connection, now_ns: int, config: CompactionConfig) -> bool:
    """Whether the head holds rows of a closed window that is still settling (a backlog).

    The pages compaction frees then are the pages the head's next rows take, so giving them
    back to the file system would only move pages to no end, and hold the write lock doing
    it (measured: 7 steps of ~0.1-0.6 s each in the first 30 s of a backfill).
    """
    row = conn.execute(
        f"SELECT 1 FROM {HEAD} WHERE ts < ? LIMIT 1", (config.closed_before(now_ns),)
    )
    return row.fetchone() is not None


def compact_once(
    conn: sqlite3.Connection,
    now_ns: int,
    config: CompactionConfig = DEFAULT_CONFIG,
    activity: Activity | None = None,
) -> int:
    """Do one bounded step of compaction; returns rows handled (0: nothing to do).

    The head comes first (its size decides the cost of live reads): a step of compacting
    the oldest closed head window, else a step of merging the oldest closed merge window's
    small blocks. Each step is one transaction. With `activity`, a window (or merge window)
    still receiving readings is skipped until it settles; without it, closed is enough.
    """
    n = _compact_head(conn, now_ns, config, activity)
    if n or not config.merge_ns:
        return n
    return merge_small_blocks(conn, now_ns, config, activity)


def _oldest_settled_window(
    conn: sqlite3.Connection, closed_before: int, w: int, activity: Activity | None
) -> int | None:
    """Start of the oldest closed window with head rows that is not still filling."""
    cursor = -(2**63)
    for _ in range(MAX_WINDOWS_SKIPPED + 1):
        row = conn.execute(
            f"SELECT ts FROM {HEAD} WHERE ts >= ? ORDER BY ts LIMIT 1", (cursor,)
        ).fetchone()
        if row is None or row[0] >= closed_before:
            return None
        start: int = row[0] // w * w
        if activity is None or activity.window_settled(start):
            return start
        cursor = start + w
    return None


def _compact_head(
    conn: sqlite3.Connection, now_ns: int, config: CompactionConfig, activity: Activity | None
) -> int:
    w = config.window_ns
    closed_before = config.closed_before(now_ns)
    staging.ensure_tables(conn)
    hour = directmerge.current(conn)
    if hour is not None:
        return directmerge.step(conn, hour, config)
    if not conn.in_transaction:
        # Read and encode with no write lock held where the step allows it.
        staged = staging.current(conn)
        if staged is None:
            staging.discard(conn)  # the last window's stage, if any: no lock held
            handled = _compact_window_unlocked(conn, now_ns, config, activity)
        elif staged[1] != "delete":
            handled = staging.step_unlocked(conn, staged, config)
        else:
            handled = None
        if handled is not None:
            return handled
    with transaction(conn):
        state = staging.current(conn)
        if state is not None:
            return staging.step_locked(conn, state, config)
        found = _oldest_settled_window(conn, closed_before, w, activity)
        if found is None:
            return 0
        start = found
        if activity is not None:
            activity.compacted(start)
        if staging.chunk_end(conn, start, start + w, config.max_rows) >= start + w:
            return _compact_small_window(conn, start, start + w, config)
        staging.begin(conn, start)
        return 1  # the steps follow, each its own call


def _compact_window_unlocked(
    conn: sqlite3.Connection,
    now_ns: int,
    config: CompactionConfig,
    activity: Activity | None,
) -> int | None:
    """Compact the oldest settled window of at most max_rows head rows, holding the write
    lock only to write: its rows and blocks are read in a read transaction and encoded with
    no lock held, so a writer in another process (or thread) keeps committing meanwhile.

    Returns the rows handled (0: nothing to do), or None when the window needs the staged
    steps (too large) or changed before the write (late readings arrived for it, or another
    compactor touched its blocks): the caller then does it under the lock.
    """
    w = config.window_ns
    closed_before = config.closed_before(now_ns)
    conn.execute("BEGIN")  # deferred: a snapshot for the reads, no write lock
    try:
        start = _oldest_settled_window(conn, closed_before, w, activity)
        if start is None:
            return 0
        hour = _direct_hour(conn, start, now_ns, config, activity)
        if hour == "wait":
            return 0  # the rest of its merge window is still settling: wait for it
        if hour is not None:
            conn.execute("COMMIT")
            if activity is not None:
                for key in range(hour, hour + config.merge_ns, w):
                    activity.compacted(key)
            return directmerge.step(
                conn, directmerge.begin(conn, hour, hour + config.merge_ns), config
            )
        end = _run_end(conn, start, closed_before, config, activity)
        if end is None:
            return 0  # the rest of its slot is still settling: wait for it
        limit = config.max_rows if end - start == w else config.run_rows
        rows = conn.execute(
            f"SELECT series_id, ts, value FROM {HEAD} WHERE ts >= ? AND ts < ? LIMIT ?",
            (start, end, limit + 1),
        ).fetchall()
        if len(rows) > limit:
            return None  # a window too large for one step (_run_end checked the slot)
        rows.sort(key=itemgetter(0))  # stable: each series keeps its ts order
        existing = covering_blocks(conn, start, rows, config)
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")
    if activity is not None:
        for key in range(start, end, w):
            activity.compacted(key)
    out = head_block_rows(start, end, rows, config.merge_ns, existing)
    try:
        with transaction(conn):
            # The blocks' ids change whenever a block is rewritten.
            if covering_blocks(conn, start, rows, config) != existing or (
                end - start > w and _blocks_start_within(conn, start + 1, end)
            ):
                return None
            # The writer only adds head rows and only compaction removes them, so deleting
            # as many as were read deletes the same rows. The DELETE's count is the check:
            # counting first walked the range twice under the lock (~50 ms for a slot).
            deleted = conn.execute(
                f"DELETE FROM {HEAD} WHERE ts >= ? AND ts < ?", (start, end)
            ).rowcount
            if deleted != len(rows):
                raise _HeadChanged
            insert_blocks(conn, out)
    except _HeadChanged:
        return None  # rolled back: late readings arrived meanwhile
    log.debug("compacted start_ns=%d windows=%d readings=%d", start, (end - start) // w, len(rows))
    return max(len(rows), 1)


class _HeadChanged(Exception):
    """A window's head rows are not the ones read before the write transaction."""


def _direct_hour(
    conn: sqlite3.Connection,
    start: int,
    now_ns: int,
    config: CompactionConfig,
    activity: Activity | None,
) -> int | Literal["wait"] | None:
    """Start of the merge window holding `start` (the oldest settled window) when it goes
    straight into its final blocks (collector.storage.sqlite.directmerge): closed the way a
    merge closes, no block in it yet, not given up on before, readings stored past its end
    (the backlog has moved on) or none arriving in it for a while; "wait" while its windows
    settle or readings arrive in it; None when it takes the two levels."""
    m = config.merge_ns
    if not config.direct_merge or not m:
        return None
    hour = start - start % m
    if hour + m > now_ns - config.merge_grace_ns or directmerge.skipped(conn, hour):
        return None
    if _blocks_start_within(conn, hour, hour + m):
        return None  # compacted window by window already (live, a restart, late readings)
    if conn.execute(f"SELECT 1 FROM {HEAD} WHERE ts >= ? LIMIT 1", (hour + m,)).fetchone() is None:
        # Nothing stored past the hour: the replay may not have reached its later windows
        # yet (a window nobody wrote to counts as settled), whose readings would then all
        # arrive late and each re-encode its hour's block. Without activity to tell, the
        # two levels take it; with it, an hour of at least max_rows readings (the end of a
        # backlog, where the direct path saves most) waits until no reading arrived in it
        # for merge_quiet_s (at most max_wait_s, as a window's wait); a smaller one (a
        # device's spool, a few late batches) is not worth holding compaction back for.
        if activity is None:
            return None
        if not activity.merge_quiet(hour):
            big = staging.chunk_end(conn, hour, hour + m, config.max_rows) < hour + m
            return "wait" if big else None
    if activity is not None and not all(
        activity.window_settled(k) for k in range(hour, hour + m, config.window_ns)
    ):
        return "wait"
    return hour


def _run_end(
    conn: sqlite3.Connection,
    start: int,
    closed_before: int,
    config: CompactionConfig,
    activity: Activity | None,
) -> int | None:
    """End of the head range to compact from `start`, the oldest settled window: its slot
    (RUN_WINDOWS windows) when the slot is closed, settled, has no blocks yet and fits in
    run_rows; the window alone otherwise; None to wait while the rest of the slot settles.

    A slot's blocks all start at the slot start then (a late window merges into them,
    blockwrites.covering_blocks), so a series' blocks never overlap.
    """
    w, run = config.window_ns, config.run_ns
    if run == w or start % run or start + run > closed_before:
        return start + w  # live windows close one at a time
    if _blocks_start_within(conn, start, start + run):
        return start + w  # compacted window by window already (a restart, late readings)
    if activity is not None and not all(
        activity.window_settled(k) for k in range(start + w, start + run, w)
    ):
        return None
    if staging.chunk_end(conn, start, start + run, config.run_rows) < start + run:
        return start + w
    return start + run


def _blocks_start_within(conn: sqlite3.Connection, lo: int, hi: int) -> bool:
    row = conn.execute(
        f"SELECT 1 FROM {BLOCKS} WHERE start_ns >= ? AND start_ns < ? LIMIT 1", (lo, hi)
    ).fetchone()
    return row is not None


def _compact_small_window(
    conn: sqlite3.Connection, start: int, end: int, config: CompactionConfig
) -> int:
    """A window of at most max_rows head rows in one step: pack its blocks, delete its rows.

    Under the lock, inside the caller's transaction: the fallback of
    _compact_window_unlocked (and its path when the caller holds a transaction).
    """
    rows = conn.execute(
        f"SELECT series_id, ts, value FROM {HEAD} WHERE ts >= ? AND ts < ?", (start, end)
    ).fetchall()
    # In key order (ts, series_id); a stable sort by series keeps each series' ts order
    # (measured 12 ms less per 48,000 rows than ORDER BY series_id, ts in SQL).
    rows.sort(key=itemgetter(0))
    if rows:
        write_head_blocks(conn, start, end, rows, config)
    conn.execute(f"DELETE FROM {HEAD} WHERE ts >= ? AND ts < ?", (start, end))
    log.debug("compacted window start_ns=%d readings=%d", start, len(rows))
    return max(len(rows), 1)
