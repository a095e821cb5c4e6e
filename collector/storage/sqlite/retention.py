"""Retention: readings older than the retention period leave the database.

`apply_retention(conn, cutoff_ns)` drops whole blocks that end before the cutoff and deletes
head rows older than it, in small transactions. The maintenance process
(collector.storage.sqlite.maintainer) runs it once compaction has nothing to do.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Final

from collector.storage.sqlite import headchunks, staging
from collector.storage.sqlite.blockwrites import transaction
from collector.storage.sqlite.store import BLOCKS

log = logging.getLogger(__name__)

# Rows (blocks, or head chunks of several readings) deleted per retention transaction.
RETENTION_BATCH_ROWS: Final = 10_000


def apply_retention(
    conn: sqlite3.Connection, cutoff_ns: int, *, batch_rows: int = RETENTION_BATCH_ROWS
) -> tuple[int, int]:
    """Drop blocks whose readings all precede `cutoff_ns`, and head rows before it.

    Works in transactions of at most `batch_rows` rows (blocks, or head chunks) each. Returns
    (blocks dropped, head readings deleted). A block holding readings on both sides of the
    cutoff is kept whole. Run it on the compacting connection, between maintenance calls; it
    is cheap when there is nothing to drop, so it can run with every maintenance call.
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
            n, more = headchunks.delete_before(conn, cutoff_ns, batch_rows)
            if n:
                staging.forget_staged_window(conn)
        head_deleted += n
        if not more:
            break
    if blocks_dropped or head_deleted:
        log.info(
            "retention cutoff_ns=%d blocks_dropped=%d head_rows_deleted=%d",
            cutoff_ns,
            blocks_dropped,
            head_deleted,
        )
    return blocks_dropped, head_deleted
