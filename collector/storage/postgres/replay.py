"""Replay of stored rejects in PostgreSQL: re-validate dead letters, move those that now pass.

Chunk by chunk: pending rejects are read, re-validated with the caller's `Preparer`, the
partitions their readings need are made, and then one transaction locks the chunk's rejects
that are still pending (`FOR UPDATE`: a replay running elsewhere at the same time waits, then
skips what it moved), stores the passing readings as live ingest would, minus the seq check
(collector.storage.postgres.ingest), and stamps them `replayed_ns`. A stamped reject is never
looked at again, so a second run moves nothing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final

import msgpack

from collector.storage.interface import PreparedBatch, Preparer, ReplayResult
from collector.storage.postgres.ingest import GroupStore
from collector.storage.postgres.reads import glob_regex
from collector.storage.postgres.schema import DEVICES, REJECTED, Conn

log = logging.getLogger(__name__)

# Rejects re-validated per transaction: short transactions keep the writer's waits short.
REPLAY_CHUNK: Final = 500


def replay_rejected(
    conn: Conn, prepare: Preparer, *, devices: Sequence[str] = (), now_ns: int
) -> ReplayResult:
    """Move the pending rejects that now pass into the readings, exactly once; `conn` is in
    autocommit mode and used by this call alone."""
    checked = replayed = 0
    after = 0
    store = GroupStore()  # a cache of its own: it only ever holds this replay's commits
    device_test = "d.name ~ ANY(%s)" if devices else "true"
    while True:
        params: list[object] = [after]
        if devices:
            params.append([glob_regex(g) for g in devices])
        rows = conn.execute(
            f"SELECT r.id, r.device_id, r.received_ns, r.raw FROM {REJECTED} AS r "
            f"JOIN {DEVICES} AS d ON d.id = r.device_id WHERE r.replayed_ns IS NULL "
            f"AND r.id > %s AND {device_test} ORDER BY r.id LIMIT {REPLAY_CHUNK}",
            params,
        ).fetchall()
        if not rows:
            break
        after = rows[-1][0]
        passing: dict[int, tuple[int, PreparedBatch]] = {}
        for rid, device_id, received, raw in rows:
            try:
                reading = msgpack.unpackb(bytes(raw), raw=False, timestamp=2)
            except (ValueError, TypeError, msgpack.UnpackException):
                continue  # not even msgpack: it can never pass
            prepared = prepare.prepare(0, [reading], received)
            if not prepared.rejects:
                passing[rid] = (device_id, prepared)
                store.ensure_days(conn, prepared.ts, now_ns)
        moved: list[int] = []
        if passing:
            with conn.transaction():
                pending = {
                    r[0]
                    for r in conn.execute(
                        f"SELECT id FROM {REJECTED} WHERE id = ANY(%s) AND replayed_ns IS NULL "
                        "ORDER BY id FOR UPDATE",
                        (sorted(passing),),
                    )
                }
                moved = sorted(pending)
                store.insert_unsequenced(conn, [passing[rid] for rid in moved])
                conn.execute(
                    f"UPDATE {REJECTED} SET replayed_ns = %s WHERE id = ANY(%s)", (now_ns, moved)
                )
        checked += len(rows)
        replayed += len(moved)
    log.info("replayed rejects checked=%d replayed=%d", checked, replayed)
    return ReplayResult(checked, replayed, checked - replayed)
