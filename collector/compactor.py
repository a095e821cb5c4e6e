"""Background compaction and retention, run inside the single writer thread.

`maintenance(conn, now_ns)` is the writer's hook: each call does a bounded amount of work in
its own transaction and returns. It takes the oldest closed window that still has readings
in the time-ordered head (a window [k * W, (k + 1) * W) is closed once it ends at least the
grace period before `now_ns`), packs each series' readings of that window into one row of
the `blocks` table (collector.blocks), and deletes them from the head. When a window holds
more than `max_rows` readings a call takes a slice of the series ids; the next call takes
the next slice.

Merging and dedup: a late or resent reading lands in the head after its window was
compacted (INSERT OR IGNORE cannot see the block); the next call finds it in a closed window
again, decodes that series' block, adds the readings whose timestamps the block lacks (the
block's value wins, as the first INSERT OR IGNORE would have kept it), and rewrites the
block. Readers never see a reading twice meanwhile (collector.scan dedups the same way).

Crash safety: writing the blocks and deleting the head rows happen in one transaction, so
a crash at any point leaves each reading either still in the head or in its block.

Retention (`apply_retention`) drops whole blocks that end before the cutoff and deletes
head rows older than it, in small transactions.

This module only moves stored readings; it never inserts new ones and opens no connection.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

from collector import blocks as codec
from collector.store import BLOCKS, HEAD

log = logging.getLogger(__name__)

# Window per block: 1 h holds 360 readings of a 10 s series, enough that the per-row
# overhead (key, summaries) stays under a byte per reading; measured in docs/benchmarks.md.
WINDOW_NS: Final = 3_600 * 10**9
# Late readings within this much of a window's end still land before it is compacted;
# later ones are merged into the block by a further call.
GRACE_NS: Final = 300 * 10**9
# Head rows moved per call: bounds how long one call holds the write lock (~0.1-0.2 s).
MAX_ROWS_PER_CALL: Final = 50_000
# Rows deleted per retention transaction.
RETENTION_BATCH_ROWS: Final = 10_000


@dataclass(frozen=True, slots=True)
class CompactionConfig:
    """Window size, grace period for late data, and the per-call work bound."""

    window_ns: int = WINDOW_NS
    grace_ns: int = GRACE_NS
    max_rows: int = MAX_ROWS_PER_CALL

    def __post_init__(self) -> None:
        if not 0 < self.window_ns <= codec.MAX_WINDOW_NS:
            raise ValueError(f"window_ns must be in (0, {codec.MAX_WINDOW_NS}]")
        if self.grace_ns < 0:
            raise ValueError("grace_ns must be >= 0")
        if self.max_rows < 1:
            raise ValueError("max_rows must be >= 1")


DEFAULT_CONFIG: Final = CompactionConfig()


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """Own transaction (BEGIN IMMEDIATE), or a savepoint inside the caller's."""
    if conn.in_transaction:
        conn.execute("SAVEPOINT compaction")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK TO compaction")
            conn.execute("RELEASE compaction")
            raise
        conn.execute("RELEASE compaction")
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def maintenance(conn: sqlite3.Connection, now_ns: int) -> None:
    """The writer's hook: compact at most one bounded unit of closed head readings."""
    compact_once(conn, now_ns, DEFAULT_CONFIG)


def compact_once(
    conn: sqlite3.Connection, now_ns: int, config: CompactionConfig = DEFAULT_CONFIG
) -> int:
    """Move up to `config.max_rows` head readings of the oldest closed window into blocks.

    Returns the number of head rows moved (0 when no closed window has head readings).
    """
    w = config.window_ns
    closed_before = (now_ns - config.grace_ns) // w * w
    with _transaction(conn):
        first = conn.execute(f"SELECT ts FROM {HEAD} ORDER BY ts LIMIT 1").fetchone()
        if first is None or first[0] >= closed_before:
            return 0
        start = first[0] // w * w
        end = start + w
        rows = conn.execute(
            f"SELECT series_id, ts, value FROM {HEAD} WHERE ts >= ? AND ts < ? LIMIT ?",
            (start, end, config.max_rows + 1),
        ).fetchall()
        where = "ts >= ? AND ts < ?"
        params: tuple[int, ...] = (start, end)
        if len(rows) > config.max_rows:
            # More than one call's worth: take a slice of series ids sized to the budget.
            n, lo, hi = conn.execute(
                f"SELECT count(*), min(series_id), max(series_id) FROM {HEAD} WHERE {where}",
                params,
            ).fetchone()
            span = max(1, (hi - lo + 1) * config.max_rows // n)
            where += " AND series_id >= ? AND series_id < ?"
            params = (start, end, lo, lo + span)
            rows = conn.execute(
                f"SELECT series_id, ts, value FROM {HEAD} WHERE {where}", params
            ).fetchall()
        _write_blocks(conn, start, end, rows)
        conn.execute(f"DELETE FROM {HEAD} WHERE {where}", params)
    log.debug("compacted window start_ns=%d rows=%d", start, len(rows))
    return len(rows)


def _write_blocks(
    conn: sqlite3.Connection, start: int, end: int, rows: list[tuple[int, int, codec.Value]]
) -> None:
    per_series: dict[int, tuple[list[int], list[codec.Value]]] = {}
    for sid, t, value in rows:  # head order is (ts, series_id): each list is sorted
        entry = per_series.get(sid)
        if entry is None:
            per_series[sid] = ([t], [value])
        else:
            entry[0].append(t)
            entry[1].append(value)
    existing = dict(
        conn.execute(
            f"SELECT series_id, data FROM {BLOCKS} WHERE start_ns = ? "
            "AND series_id IN (SELECT value FROM json_each(?))",
            (start, json.dumps(sorted(per_series))),
        ).fetchall()
    )
    out = []
    for sid in sorted(per_series):
        ts, values = per_series[sid]
        old = existing.get(sid)
        if old is not None:
            ts, values = _merge(codec.decode(old), ts, values)
        s = codec.summarize(ts, values)
        out.append(
            (
                *(sid, start, end, s.count, s.first_ts, s.last_ts, s.first_value),
                *(s.last_value, s.min, s.max, s.sum, codec.encode(ts, values)),
            )
        )
    conn.executemany(
        f"INSERT OR REPLACE INTO {BLOCKS} (series_id, start_ns, end_ns, count, first_ts, "
        "last_ts, first_value, last_value, min, max, sum, data) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        out,
    )


def _merge(
    block: tuple[list[int], list[codec.Value]], ts: list[int], values: list[codec.Value]
) -> tuple[list[int], list[codec.Value]]:
    """Block readings plus head readings at timestamps the block lacks (the block wins)."""
    bts, bvalues = block
    if ts[0] > bts[-1]:
        return bts + ts, bvalues + values
    merged = dict(zip(ts, values, strict=True))
    merged.update(zip(bts, bvalues, strict=True))
    order = sorted(merged)
    return order, [merged[t] for t in order]


def apply_retention(
    conn: sqlite3.Connection, cutoff_ns: int, *, batch_rows: int = RETENTION_BATCH_ROWS
) -> tuple[int, int]:
    """Drop blocks whose readings all precede `cutoff_ns`, and head rows before it.

    Works in transactions of at most `batch_rows` rows each. Returns (blocks dropped, head
    rows deleted). A block holding readings on both sides of the cutoff is kept whole.
    """
    blocks_dropped = head_deleted = 0
    while True:
        with _transaction(conn):
            keys = conn.execute(
                f"SELECT series_id, start_ns FROM {BLOCKS} WHERE start_ns < ? AND last_ts < ? "
                "LIMIT ?",
                (cutoff_ns, cutoff_ns, batch_rows),
            ).fetchall()
            conn.executemany(f"DELETE FROM {BLOCKS} WHERE series_id = ? AND start_ns = ?", keys)
        blocks_dropped += len(keys)
        if len(keys) < batch_rows:
            break
    while True:
        with _transaction(conn):
            n = conn.execute(
                f"DELETE FROM {HEAD} WHERE (ts, series_id) IN "
                f"(SELECT ts, series_id FROM {HEAD} WHERE ts < ? ORDER BY ts LIMIT ?)",
                (cutoff_ns, batch_rows),
            ).rowcount
        head_deleted += n
        if n < batch_rows:
            break
    log.info(
        "retention cutoff_ns=%d blocks_dropped=%d head_rows_deleted=%d",
        cutoff_ns,
        blocks_dropped,
        head_deleted,
    )
    return blocks_dropped, head_deleted
