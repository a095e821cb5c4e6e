"""Readings are stored exactly as sent: no column affinity rewrites a value."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from schemas import wire
from tests.collector.wireclient import CollectorProcess, WireClient


def test_values_keep_their_type_in_head_and_latest(tmp_path: Path) -> None:
    ts = time.time_ns()
    readings: list[object] = [
        ["door/log", "event", ts, "007", None, None],
        ["air", "temperature", ts, 21.0, "C", None],
        ["pulses", "counter", ts, 5, None, None],
        ["relay", "state", ts, True, None, None],
    ]
    with CollectorProcess(tmp_path / "t.db") as daemon:
        token = daemon.add_device("dev-1")
        with WireClient(*daemon.ingest) as c:
            assert isinstance(c.hello("dev-1", token), wire.Welcome)
            ack = c.batch(1, readings)
            assert isinstance(ack, wire.Ack) and ack.accepted == 4, ack
    conn = sqlite3.connect(tmp_path / "t.db")
    got = dict(
        conn.execute(
            """SELECT s.sensor, typeof(h.value) || ':' || h.value FROM readings_head h
               JOIN series s ON s.id = h.series_id"""
        ).fetchall()
    )
    latest = dict(
        conn.execute("SELECT sensor, typeof(last_value) || ':' || last_value FROM series")
    )
    conn.close()
    expected = {
        "door/log": "text:007",
        "air": "real:21.0",
        "pulses": "integer:5",
        "relay": "integer:1",
    }
    assert got == expected
    assert latest == expected
