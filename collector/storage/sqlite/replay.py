"""Replay of stored rejects: re-validate dead-letter rows and move the ones that now pass.

Behind `SQLiteStorage.replay_rejected` (`telemetry rejected --replay`), run after a kinds file
was fixed. It writes through its own connection in short `BEGIN IMMEDIATE` transactions, so
it is safe beside a running collector (SQLite serialises writers) and exactly-once: each
reject is stamped `replayed_ns` in the same transaction that inserts its readings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Final

import msgpack

from collector.storage.interface import Filters, PreparedBatch, Preparer
from collector.storage.interface import ReplayResult as ReplayResult
from collector.storage.sqlite import store
from collector.storage.sqlite.batchstore import BatchStore
from collector.storage.sqlite.series import series_where

log = logging.getLogger(__name__)

# Rejects re-validated per write transaction: short transactions keep the collector's writer
# waiting at most a few milliseconds (it waits on busy_timeout, it does not fail).
REPLAY_CHUNK: Final = 500


def replay_rejected(
    path: str,
    ingest: Preparer,
    *,
    devices: Sequence[str] = (),
    now: int | None = None,
) -> ReplayResult:
    """Re-validate stored rejects; move the ones that now pass into the readings, exactly once.

    The one write path of this module. It opens its own write connection and works in
    chunks, each one `BEGIN IMMEDIATE` transaction that inserts the passing readings
    (shaped into series rows by `collector.ingest.prepare` and stored by
    `collector.storage.sqlite.batchstore` exactly as live ingest does, minus the seq check: a
    reading a compacted block or the head holds already is a duplicate) and stamps their rejects
    with `replayed_ns`. A stamped reject is never looked at again, so a second run (or a run
    interrupted between chunks) moves nothing twice. SQLite serialises writers, so it may run while
    the collector ingests: each side waits on `busy_timeout` for the other's short transaction.
    """
    stamp = time.time_ns() if now is None else now
    checked = replayed = 0
    after = 0
    where, params = series_where(Filters(devices=tuple(devices)))
    conn = store.connect(path)
    try:
        while True:
            conn.execute("BEGIN IMMEDIATE")
            try:
                rows = conn.execute(
                    f"SELECT r.id, r.device_id, r.received_ns, r.raw FROM {store.REJECTED} AS r "
                    f"JOIN {store.DEVICES} AS d ON d.id = r.device_id "
                    f"WHERE r.replayed_ns IS NULL AND r.id > ? AND {where} ORDER BY r.id LIMIT ?",
                    [after, *params, REPLAY_CHUNK],
                ).fetchall()
                if not rows:
                    conn.execute("COMMIT")
                    break
                after = rows[-1][0]
                moved: list[int] = []
                passing: list[tuple[int, PreparedBatch]] = []
                for rid, device_id, received, raw in rows:
                    try:
                        reading = msgpack.unpackb(raw, raw=False, timestamp=2)
                    except (ValueError, TypeError, msgpack.UnpackException):
                        continue  # not even msgpack: it can never pass
                    prepared = ingest.prepare(0, [reading], received)
                    if prepared.rejects:
                        continue
                    passing.append((device_id, prepared))
                    moved.append(rid)
                # A store of its own: its caches live as long as this transaction.
                BatchStore().insert_unsequenced(conn, passing)
                conn.executemany(
                    f"UPDATE {store.REJECTED} SET replayed_ns = ? WHERE id = ?",
                    [(stamp, rid) for rid in moved],
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            checked += len(rows)
            replayed += len(moved)
    finally:
        conn.close()
    log.info("replayed rejects checked=%d replayed=%d", checked, replayed)
    return ReplayResult(checked, replayed, checked - replayed)
