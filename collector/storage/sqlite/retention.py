"""Retention: readings older than the retention period leave the database.

`apply_retention(conn, cutoff_ns)` drops whole blocks that end before the cutoff and deletes
head rows older than it, in small transactions. The maintenance process
(collector.storage.sqlite.maintainer) runs it once compaction has nothing to do.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Final

from collector.storage.sqlite import directmerge, staging
from collector.storage.sqlite.blockwrites import transaction
from collector.storage.sqlite.store import BLOCKS, HEAD

log = logging.getLogger(__name__)

# Rows deleted per retention transaction.
RETENTION_BATCH_ROWS: Final = 10_000


def apply_retention(
    conn: sqlite3.Connection, cutoff_ns: int, *, batch_rows: int = RETENTION_BATCH_ROWS
) -> tuple[int, int]:
    """Drop blocks whose readings all precede `cutoff_ns`, and head rows before it.

    Works in transactions of at most `batch_rows` rows each. Returns (blocks dropped, head
    rows deleted). A block holding readings on both sides of the cutoff is kept whole.
    Run it on the compacting connection, between maintenance calls; it is
    cheap when there is nothing to drop, so it can run with every maintenance call.
    """
    blocks_dropped = head_deleted = 0
    while True:
        with transaction(conn):
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
        with transaction(conn):
            n = conn.execute(
                f"DELETE FROM {HEAD} WHERE (ts, series_id) IN "
                f"(SELECT ts, series_id FROM {HEAD} WHERE ts < ? ORDER BY ts LIMIT ?)",
                (cutoff_ns, batch_rows),
            ).rowcount
            if n:
                staging.forget_staged_window(conn)
                directmerge.forget(conn)
        head_deleted += n
        if n < batch_rows:
            break
    if blocks_dropped or head_deleted:
        log.info(
            "retention cutoff_ns=%d blocks_dropped=%d head_rows_deleted=%d",
            cutoff_ns,
            blocks_dropped,
            head_deleted,
        )
    return blocks_dropped, head_deleted
