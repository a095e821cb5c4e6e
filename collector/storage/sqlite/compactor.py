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
beside it; `maintenance` runs the latter once compaction has nothing to do.

This module only moves stored readings; it never inserts new ones and opens no connection.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from operator import itemgetter
from typing import Final

from collector.storage.sqlite import blocks as codec
from collector.storage.sqlite import staging, store
from collector.storage.sqlite.activity import MAX_WINDOWS_SKIPPED, Activity
from collector.storage.sqlite.blockwrites import (
    covering_blocks,
    head_block_rows,
    insert_blocks,
    transaction,
    write_head_blocks,
)
from collector.storage.sqlite.merging import merge_small_blocks
from collector.storage.sqlite.store import BLOCKS, HEAD

log = logging.getLogger(__name__)

# First level: the head's closed 2-minute windows move into small per-series blocks, so the
# head holds about WINDOW_NS + GRACE_NS of readings (a per-series read walks every series'
# head rows: its cost grows with the head). 1 minute measured 40% more compaction time per
# reading (twice the small blocks to write and merge: 38 s against 27 s for 6M readings of
# 8,000 series) for a head of at most ~110,000 rows instead of ~150,000; docs/benchmarks.md,
# "Storage engine".
WINDOW_NS: Final = 120 * 10**9
# Late readings within this much of a window's end still land before it is compacted;
# later ones are merged into the block that covers them by a further call.
GRACE_NS: Final = 30 * 10**9
# Second level: a closed hour's small blocks are merged into one block per series. 1 h holds
# 360 readings of a 10 s series, enough that the per-row overhead (key, summaries) stays
# under a byte per reading; measured in docs/benchmarks.md. store.m0003 indexes the blocks
# shorter than this (the small ones), so the constant is also in that migration.
MERGE_NS: Final = 3_600 * 10**9
# An hour is merged once it ended this long ago: the few late readings for it until then
# go into the small blocks, which are cheaper to rewrite than the hour's block.
MERGE_GRACE_NS: Final = 300 * 10**9
# A window of at most this many head rows is compacted in one step (~0.25 s); 100,000
# holds a 2-minute window of 8,000 series at one reading per 10 s (96,000 rows). Once per
# window, so it barely shows in the ACK latency; larger windows go in steps of STEP_ROWS.
MAX_ROWS_PER_CALL: Final = 100_000
# A backlog's windows are all closed by the clock at once: there the windows of one slot of
# RUN_WINDOWS windows (10 minutes; slots are aligned, RUN_WINDOWS * WINDOW_NS divides
# MERGE_NS) are compacted together once all of them have settled, into one small block per
# series instead of five, up to RUN_MAX_ROWS head rows (~70 MB in memory while encoding).
# Live windows close one at a time and are compacted one at a time as before. Measured
# (bench/bench_window_lock.py --run-windows 5): the write lock is held 0.43 µs per reading
# instead of 0.85 (a fifth of the block inserts), so the writer waits half as long; reading
# and encoding cost the same per reading, and the hour's merge decodes a fifth of the blocks.
RUN_WINDOWS: Final = 5
RUN_MAX_ROWS: Final = 500_000
# Rows one step of a large window (stage, pack, delete) handles: the step holds the write
# lock throughout and a batch that arrives meanwhile waits for it.
STEP_ROWS: Final = 20_000
# Readings one step of a merge handles. A merge step decodes and encodes with no lock held
# and then writes for a few ms, so its size barely shows in the ACK latency; each step
# waits once for the writer's transaction in progress, and 20,000-reading steps left the
# hourly merges behind a 100,000 readings/s backfill (docs/benchmarks.md).
MERGE_STEP_ROWS: Final = 100_000


@dataclass(frozen=True, slots=True)
class CompactionConfig:
    """Window size, grace period for late data, the per-call work bound, and the merge level.

    `merge_ns` 0 means one level: head windows become the final blocks. Otherwise it is a
    multiple of `window_ns`, and closed `merge_ns` windows of small blocks are merged.
    """

    window_ns: int = WINDOW_NS
    grace_ns: int = GRACE_NS
    max_rows: int = MAX_ROWS_PER_CALL
    merge_ns: int = 0
    merge_grace_ns: int = MERGE_GRACE_NS
    step_rows: int = STEP_ROWS
    merge_step_rows: int = MERGE_STEP_ROWS
    run_windows: int = 1
    run_rows: int = RUN_MAX_ROWS

    def closed_before(self, now_ns: int) -> int:
        """Start of the oldest window not closed at `now_ns` (it ends within the grace)."""
        return (now_ns - self.grace_ns) // self.window_ns * self.window_ns

    @property
    def run_ns(self) -> int:
        """Length of a slot whose closed, settled windows are compacted together."""
        return self.window_ns * self.run_windows

    @property
    def step(self) -> int:
        """Rows per step of a staged window: step_rows, at most max_rows."""
        return min(self.step_rows, self.max_rows)

    @property
    def merge_step(self) -> int:
        """Readings per step of a merge: merge_step_rows, at most max_rows."""
        return min(self.merge_step_rows, self.max_rows)

    def __post_init__(self) -> None:
        if not 0 < self.window_ns <= codec.MAX_WINDOW_NS:
            raise ValueError(f"window_ns must be in (0, {codec.MAX_WINDOW_NS}]")
        if self.grace_ns < 0 or self.merge_grace_ns < 0:
            raise ValueError("grace_ns and merge_grace_ns must be >= 0")
        if min(self.max_rows, self.step_rows, self.merge_step_rows, self.run_rows) < 1:
            raise ValueError("max_rows, step_rows, merge_step_rows and run_rows must be >= 1")
        if self.run_windows < 1 or self.run_ns > codec.MAX_WINDOW_NS:
            raise ValueError(f"run_windows must be >= 1, window_ns * run_windows <= "
                             f"{codec.MAX_WINDOW_NS}")  # fmt: skip
        if (
            self.merge_ns
            and self.run_windows > 1
            and (self.merge_ns % self.run_ns or self.run_ns >= self.merge_ns)
        ):
            raise ValueError("window_ns * run_windows must divide merge_ns and be shorter")
        if self.merge_ns and (
            self.merge_ns <= self.window_ns
            or self.merge_ns % self.window_ns
            or self.merge_ns > codec.MAX_WINDOW_NS
        ):
            raise ValueError(
                f"merge_ns must be 0 or a multiple of window_ns in ({self.window_ns}, "
                f"{codec.MAX_WINDOW_NS}]"
            )


DEFAULT_CONFIG: Final = CompactionConfig(merge_ns=MERGE_NS, run_windows=RUN_WINDOWS)


def maintenance(conn: sqlite3.Connection, now_ns: int, activity: Activity | None = None) -> bool:
    """One bounded step (at most MAX_ROWS_PER_CALL rows, one write transaction); True while
    there is more to do. The caller decides how often to call it. With `activity` (fed by
    the writer), windows still receiving readings wait until quiet.
    """
    if compact_once(conn, now_ns, DEFAULT_CONFIG, activity):
        return True
    if not _closed_rows_waiting(conn, now_ns, DEFAULT_CONFIG) and store.reclaim_space(conn):
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
    if not conn.in_transaction:
        # Read and encode with no write lock held where the step allows it.
        staged = staging.current(conn)
        if staged is None:
            handled = _compact_window_unlocked(conn, closed_before, config, activity)
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
    closed_before: int,
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
    conn.execute("BEGIN")  # deferred: a snapshot for the reads, no write lock
    try:
        start = _oldest_settled_window(conn, closed_before, w, activity)
        if start is None:
            return 0
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
