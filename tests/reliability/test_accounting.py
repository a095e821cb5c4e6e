"""Exactly-once accounting when a reading comes back after its window was compacted.

The head's INSERT OR IGNORE alone cannot see readings already moved into `blocks`: a reading
sent again in a new batch (a new seq: an agent that re-batched its readings) after its
window was compacted must still be answered as a duplicate, and counted once in the series
statistics, not only deduplicated by queries (collector.storage.sqlite.scan and the compactor's
merge).
"""

from __future__ import annotations

from schemas import wire
from tests.collector.wireclient import CollectorProcess, WireClient
from tests.reliability.harness import ENV, TS0, add_devices, ro, stored, wait_for


def _blocks(db) -> int:
    conn = ro(db)
    try:
        return int(conn.execute("SELECT count(*) FROM blocks").fetchone()[0])
    finally:
        conn.close()


def _series_count(db) -> int:
    conn = ro(db)
    try:
        return int(conn.execute("SELECT sum(count) FROM series").fetchone()[0])
    finally:
        conn.close()


def test_reading_resent_after_compaction_is_acked_as_duplicate(tmp_path):
    db = tmp_path / "late.db"
    token = add_devices(db, ["dev"])["dev"]
    reading = ["late/s", "gauge", TS0, 1.5, None, None]  # an old, closed window
    with CollectorProcess(db, env=ENV) as daemon, WireClient(*daemon.ingest) as c:
        assert isinstance(c.hello("dev", token), wire.Welcome)
        first = c.batch(1, [reading])
        assert isinstance(first, wire.Ack) and first.accepted == 1
        wait_for(lambda: _blocks(db) > 0, "the window to be compacted", 30)
        again = c.batch(2, [reading])
        assert isinstance(again, wire.Ack)
        assert stored(db).total == 1  # queries see it once either way
        assert (again.accepted, again.duplicate) == (0, 1)
        assert _series_count(db) == 1
