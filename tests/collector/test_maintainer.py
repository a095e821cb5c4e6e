"""The maintenance process (collector.storage.sqlite.maintainer): it compacts while the daemon
ingests, comes back if it dies, and never outlives the daemon."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.storage.sqlite import compactor, maintainer, scan, store
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
        return int(conn.execute("SELECT count(*) FROM readings_head").fetchone()[0])
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


def test_pace_rests_in_proportion_to_the_step_and_gives_the_whole_core_to_a_backlog() -> None:
    # Pure timekeeping on given timestamps: no clock is read, nothing sleeps.
    pace = maintainer.Pace(min_share=0.25, ramp_s=100.0, max_pause_s=10.0)
    assert pace.pause_s(0.0, 0.1, more=False) == 0.0  # nothing waits: no rest
    # Work waits: a 0.1 s step at a quarter of a core rests 0.3 s.
    assert pace.pause_s(0.0, 0.1, more=True) == pytest.approx(0.3)
    # Half-way up the ramp the share is 0.625: the same step rests 0.06 s.
    assert pace.pause_s(50.0, 50.1, more=True) == pytest.approx(0.1 * 0.375 / 0.625, rel=1e-3)
    assert pace.pause_s(100.0, 100.1, more=True) == 0.0  # waited the whole ramp: flat out
    assert pace.pause_s(200.0, 200.1, more=False) == 0.0  # caught up: the ramp starts over
    assert pace.pause_s(300.0, 300.1, more=True) == pytest.approx(0.3)
    assert maintainer.Pace(max_pause_s=0.5).pause_s(0.0, 10.0, more=True) == 0.5  # bounded


def test_pace_keeps_the_process_to_its_share_while_little_work_waits() -> None:
    # A live window's worth of steps (60 steps of 0.1 s), simulated: the busy share of the
    # process stays within [min_share, 1] and the whole of it is done in bounded time.
    pace = maintainer.Pace(min_share=0.3, ramp_s=120.0, max_pause_s=0.5)
    now, busy = 0.0, 0.0
    for i in range(60):
        t0, now = now, now + 0.1
        busy += 0.1
        now += pace.pause_s(t0, now, more=i < 59)
        assert 0.3 <= busy / now <= 1.0 + 1e-9
    assert busy / now < 0.5  # far from flat out: the writer keeps its core
    assert now < 6.0 / 0.3  # and no slower than the lowest share allows


def _wal_frames(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])


class _Turns(sqlite3.Connection):
    """The maintenance connection: its write turn is counted, and taking it stops what kept
    the first copy from finishing (in the daemon: the writer's commits meanwhile; here: a
    reader's old snapshot)."""

    turns = 0
    reader: sqlite3.Connection

    @contextlib.contextmanager
    def write_turn(self) -> Iterator[None]:
        self.turns += 1
        self.reader.execute("COMMIT")
        yield


def test_checkpoint_lets_the_writer_start_the_wal_over(tmp_path: Path) -> None:
    # Counted in WAL frames: once the maintenance process's checkpoint has copied the whole
    # WAL, the writer's next commit writes at its start instead of growing it.
    db = tmp_path / "t.db"
    store.migrate(db)
    writer, reader = store.connect(db), store.connect(db)
    conn = store.connect(db, factory=_Turns)
    assert isinstance(conn, _Turns)
    conn.reader = reader
    for c in (writer, reader, conn):
        c.execute("PRAGMA wal_autocheckpoint = 0")

    def commit(n: int = 1) -> None:
        for _ in range(n):
            writer.execute(
                "INSERT INTO devices (name, token_hash, created_ns) "
                "VALUES (hex(randomblob(8)), '', 0)"
            )

    commit(20)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM devices").fetchone()  # a snapshot: copy stops here
    commit(5)
    # Below the threshold the WAL is copied as far as it can be; the next commit appends.
    busy, frames, copied = maintainer.checkpoint(conn, restart_frames=10**6)
    assert conn.turns == 0 and 0 < frames - copied <= 10
    commit()
    assert _wal_frames(conn) > frames
    # Past it, with little left, the rest is copied in the write turn: the WAL starts over.
    busy, frames, copied = maintainer.checkpoint(conn, restart_frames=10, finish_frames=100)
    assert conn.turns == 1 and busy == 0 and frames == copied >= 26
    commit()
    assert 0 < _wal_frames(conn) <= 2
    # Too much left to copy: no write turn (the writer would wait for all of it).
    commit(20)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM devices").fetchone()
    commit(20)
    maintainer.checkpoint(conn, restart_frames=10, finish_frames=5)
    assert conn.turns == 1
    for c in (writer, reader, conn):
        c.close()


def test_the_writer_reports_a_filling_window_at_most_once_per_interval(tmp_path: Path) -> None:
    # Counted, on a fake clock: one report per window per REPORT_S, a new window at once.
    clock = [0.0]
    m = maintainer.Maintainer(str(tmp_path / "t.db"), retention_ns=None, clock=lambda: clock[0])
    w = compactor.WINDOW_NS
    sent: list[tuple[int, ...]] = []

    class Inbox:
        def put_nowait(self, item: tuple[int, ...]) -> None:
            sent.append(item)

    m.link.inbox = Inbox()  # type: ignore[assignment]
    for i in range(100):  # 100 commits in 0.1 s into one window
        m.note([5 * w + i])
        m.flush()
        clock[0] += 0.001
    assert sent == [(5 * w,)]
    m.note([6 * w])  # the next window: at once
    m.flush()
    assert sent[-1] == (6 * w,) and len(sent) == 2
    clock[0] += maintainer.REPORT_S  # the interval is over: reported again
    m.note([6 * w + 1])
    m.flush()
    assert len(sent) == 3
    m.flush()  # nothing noted since: nothing sent
    assert len(sent) == 3


def test_a_replayed_backlog_hour_goes_straight_into_its_final_blocks(tmp_path: Path) -> None:
    # A device replays an hour that ended over an hour ago, then readings past it: once its
    # windows settle, the maintenance process writes the hour's final blocks straight from
    # the head (no window of it compacted into small blocks), every reading exactly once.
    db = tmp_path / "t.db"
    m = compactor.MERGE_NS
    hour = (time.time_ns() - 3 * m) // m * m
    sensors = ("a", "b", "c")
    with CollectorProcess(db, "--log-level", "DEBUG") as daemon:
        token = daemon.add_device("dev")
        sent: set[tuple[str, int]] = set()
        with WireClient(*daemon.ingest) as c:
            assert isinstance(c.hello("dev", token), wire.Welcome)
            seq = 0
            for t in range(hour + 7 * S, hour + m + 20 * 60 * S, 60 * S):  # past the hour too
                seq += 1
                readings: list[object] = [
                    [s, "gauge", t, float(t % 997), None, None] for s in sensors
                ]
                ack = c.batch(seq, readings)
                assert isinstance(ack, wire.Ack) and ack.accepted == len(sensors), ack
                sent.update((s, t) for s in sensors)
        in_hour = sum(1 for _s, t in sent if t < hour + m)

        def hour_blocks() -> list[tuple[int, int]]:
            conn = store.connect(db, readonly=True)
            try:
                return conn.execute(
                    "SELECT end_ns - start_ns, count FROM blocks WHERE start_ns >= ? "
                    "AND start_ns < ?",
                    (hour, hour + m),
                ).fetchall()
            finally:
                conn.close()

        wait_for(lambda: len(hour_blocks()) == len(sensors), "the hour's final blocks", 60)
        assert hour_blocks() == [(m, in_hour // len(sensors))] * len(sensors)
        line = f"compacted a merge window directly start_ns={hour} "
        wait_for(lambda: line in daemon.log, "the direct compaction to end", 30)
        windows = [int(x) for x in re.findall(r"compacted start_ns=(\d+) windows=", daemon.log)]
        assert not [w for w in windows if hour <= w < hour + m]  # no small block in it
        conn = store.connect(db, readonly=True)
        try:
            names = dict(conn.execute(f"SELECT id, sensor FROM {store.SERIES}").fetchall())
            stored = [
                (names[sid], ts) for sid, ts, _v in scan.read_range(conn, list(names), None, None)
            ]
        finally:
            conn.close()
        assert sorted(stored) == sorted(sent)  # head and blocks together: each reading once
