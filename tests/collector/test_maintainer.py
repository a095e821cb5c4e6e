"""The maintenance process (collector.storage.sqlite.maintainer): it compacts while the daemon
ingests, comes back if it dies, and never outlives the daemon."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import time
import urllib.request
from pathlib import Path

from collector.storage.sqlite import compactor, store
from schemas import wire
from tests.collector.wireclient import CollectorProcess, WireClient
from tests.reliability.harness import wait_for

S = 10**9


def _children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in path.read_text().split()}


def _maintainers(daemon: CollectorProcess) -> list[int]:
    """The daemon's maintenance processes (not multiprocessing's resource tracker)."""
    assert daemon.proc is not None
    found = []
    for child in _children(daemon.proc.pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline and not _gone(child):
            found.append(child)
    return found


def _maintainer(daemon: CollectorProcess) -> int:
    found = _maintainers(daemon)
    assert len(found) == 1, found
    return found[0]


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0]
    except FileNotFoundError:
        return True
    return state == "Z"


def _blocks(db: Path) -> int:
    conn = store.connect(db, readonly=True)
    try:
        return int(conn.execute("SELECT count(*) FROM blocks").fetchone()[0])
    finally:
        conn.close()


def _send_old_window(daemon: CollectorProcess, token: str, seq: int, sensor: str) -> None:
    # All five in one closed window (compacted once it settles, 5 s): one block per sensor.
    w = compactor.WINDOW_NS
    ts = (time.time_ns() - 3_600 * S) // w * w + 10 * S
    with WireClient(*daemon.ingest) as c:
        assert isinstance(c.hello("dev", token), wire.Welcome)
        ack = c.batch(seq, [[sensor, "gauge", ts + i * S, float(i), None, None] for i in range(5)])
        assert isinstance(ack, wire.Ack) and ack.accepted == 5, ack


def _metric(daemon: CollectorProcess, name: str) -> float | None:
    """One unlabelled sample of /metrics, None when the metric has no sample."""
    assert daemon.http is not None
    host, port = daemon.http
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    assert f"# TYPE {name} " in text, name
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return None if found is None else float(found.group(1))


def test_maintainer_compacts_and_is_restarted_when_it_dies(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    with CollectorProcess(db) as daemon:
        token = daemon.add_device("dev")
        first = _maintainer(daemon)
        _send_old_window(daemon, token, 1, "a")
        wait_for(lambda: _blocks(db) == 1, "the first window to be compacted", 30)
        # What an operator watches: the head drained into one block, no restart yet.
        assert _metric(daemon, "telemetry_head_rows") == 0
        assert _metric(daemon, "telemetry_head_oldest_timestamp_seconds") is None
        assert _metric(daemon, "telemetry_blocks") == 1
        assert _metric(daemon, "telemetry_small_blocks") == 1
        assert (_metric(daemon, "telemetry_db_bytes") or 0) > 0
        assert _metric(daemon, "telemetry_maintainer_restarts_total") == 0
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: _gone(first), "the maintainer to die", 10)
        wait_for(
            lambda: _maintainers(daemon) not in ([], [first]),
            "a new maintainer",
            30,
        )
        assert _metric(daemon, "telemetry_maintainer_restarts_total") == 1
        _send_old_window(daemon, token, 2, "b")
        wait_for(lambda: _blocks(db) == 2, "the new maintainer to compact", 30)
        assert _metric(daemon, "telemetry_blocks") == 2
    assert "maintainer exited code=-9; starting it again" in daemon.log


def _in_main_file(db: Path, tmp: Path) -> int:
    """Readings in the database file proper: a copy without the WAL shows only what a
    checkpoint has copied into it."""
    copy = tmp / "main-only.db"
    copy.write_bytes(db.read_bytes())
    conn = sqlite3.connect(copy)
    try:
        return int(conn.execute("SELECT coalesce(sum(n), 0) FROM head_chunks").fetchone()[0])
    finally:
        conn.close()


def test_maintainer_checkpoints_the_wal(tmp_path: Path) -> None:
    # The writer leaves checkpoints to the maintenance process (its own threshold, 20,000
    # pages, is far away): a few readings reach the database file within a second or so.
    db = tmp_path / "t.db"
    snap = tmp_path / "snap"
    snap.mkdir()
    with CollectorProcess(db) as daemon:
        token = daemon.add_device("dev")
        now = time.time_ns()
        with WireClient(*daemon.ingest) as c:
            assert isinstance(c.hello("dev", token), wire.Welcome)
            ack = c.batch(1, [["s", "gauge", now + i, float(i), None, None] for i in range(7)])
            assert isinstance(ack, wire.Ack) and ack.accepted == 7, ack
        wait_for(lambda: _in_main_file(db, snap) == 7, "a checkpoint", 15)


def test_maintainer_dies_with_the_daemon(tmp_path: Path) -> None:
    with CollectorProcess(tmp_path / "t.db") as daemon:
        child = _maintainer(daemon)
        daemon.kill()
        wait_for(lambda: _gone(child), "the maintainer to exit with the daemon", 10)


def test_maintainer_stops_at_sigterm(tmp_path: Path) -> None:
    with CollectorProcess(tmp_path / "t.db") as daemon:
        child = _maintainer(daemon)
        assert daemon.terminate(30) == 0
        assert _gone(child)
