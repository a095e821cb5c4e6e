"""`--retention` deletes exactly the expired readings while ingest goes on."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from collector.config import load_config
from collector.errors import ConfigError
from collector.storage.sqlite import scan, store
from schemas import wire
from tests.collector.wireclient import CollectorProcess, WireClient

H_NS = 3_600_000_000_000


def _stored(db: Path) -> set[tuple[str, int]]:
    conn = store.connect(db, readonly=True)
    try:
        names = dict(conn.execute("SELECT id, sensor FROM series").fetchall())
        return {(names[sid], ts) for sid, ts, _ in scan.read_range(conn, list(names), None, None)}
    finally:
        conn.close()


def test_retention_removes_exactly_the_expired_readings_while_ingest_continues(
    tmp_path: Path,
) -> None:
    db = tmp_path / "t.db"
    now = time.time_ns()
    # Expired: every compaction window holding them ended more than 2 h ago.
    old = [("old", now - 10 * H_NS + i * 60_000_000_000) for i in range(0, 300, 7)]
    # Kept: well inside the retention period.
    recent = [("recent", now - H_NS // 2 + i * 1_000_000_000) for i in range(50)]
    with CollectorProcess(db, "--retention", "2h") as daemon:
        token = daemon.add_device("dev-1")
        with WireClient(*daemon.ingest) as c:
            assert isinstance(c.hello("dev-1", token), wire.Welcome)
            readings: list[object] = [[s, "gauge", ts, 1.0, None, None] for s, ts in old + recent]
            ack = c.batch(1, readings)
            # All accepted; the expired ones may be gone already (retention runs in the
            # maintenance process, concurrently with ingest).
            assert isinstance(ack, wire.Ack) and ack.accepted == len(readings), ack
            live: list[tuple[str, int]] = []
            seq = 2
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                # Ingest continues while retention runs: one fresh reading per round.
                ts = time.time_ns()
                ack = c.batch(seq, [["live", "gauge", ts, 2.0, None, None]])
                assert isinstance(ack, wire.Ack) and ack.accepted == 1, ack
                live.append(("live", ts))
                seq += 1
                if not any(name == "old" for name, _ in _stored(db)):
                    break
                time.sleep(0.2)
    assert _stored(db) == set(recent) | set(live)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()


def test_retention_setting_is_parsed_and_checked() -> None:
    assert load_config(env={}, overrides={"retention": "30d"}).retention_ns == 30 * 24 * H_NS
    assert load_config(env={"TELEMETRY_RETENTION": "12h"}).retention_ns == 12 * H_NS
    assert load_config(env={}).retention_ns is None
    for bad in ("5x", "0d", "-1h", "soon"):
        with pytest.raises(ConfigError, match="setting 'retention'"):
            load_config(env={}, overrides={"retention": bad})
