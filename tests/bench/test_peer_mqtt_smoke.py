"""`python -m bench.peer_mqtt` end to end with tiny numbers against the machine's Mosquitto.

Runs the real benchmark (collector subprocess, bench.load clients, paho publishers and the
validating subscriber) for ~2 s per side and checks that both sides report a nonzero rate and
that every reading sent was stored, counting the rows in the kept databases. Speed is never
asserted.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bench.peer_mqtt import broker_listening

ROOT = Path(__file__).resolve().parents[2]

if not broker_listening("127.0.0.1", 1883):
    _WHY = "no MQTT broker on 127.0.0.1:1883: apt-get install mosquitto, then start it"
    if os.environ.get("CI") == "true":
        pytest.fail(_WHY, pytrace=False)
    pytest.skip(_WHY, allow_module_level=True)


def _rows(db: Path, sql: str) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


def test_both_sides_store_every_reading(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "bench.peer_mqtt", "--duration", "2", "--connections", "4",
           "--processes", "2", "--batch", "20", "--pipeline", "2", "--commit-rows", "1000",
           "--keep", str(tmp_path), "--json"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(proc.stdout)
    ours, peer = rep["ours"], rep["peer"]

    ours_rows = _rows(tmp_path / "ours.db", "SELECT (SELECT count(*) FROM readings_head)"
                      " + (SELECT coalesce(sum(count), 0) FROM blocks)")  # fmt: skip
    peer_rows = _rows(tmp_path / "peer.db", "SELECT count(*) FROM readings")
    for name, side, rows in (("ours", ours, ours_rows), ("peer", peer, peer_rows)):
        assert side["errors"] == [], name
        assert side["readings_sent"] > 0, name
        assert side["readings_per_s"] > 0, name
        assert side["readings_sent"] % 20 == 0, name  # whole batches
        assert rows == side["readings_sent"] == side["readings_stored"], name
        assert side["latency_ms"]["p50"] is not None, name
    assert ours["readings_acked"] == ours_rows
    assert peer["rejected"] == 0
    assert peer["puback_ms"]["p99"] is not None
    assert rep["ratio_ours_over_peer"]["readings_per_s"] > 0
