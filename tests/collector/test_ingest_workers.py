"""`telemetry collector --ingest-workers N`: several ingest processes on one port.

Real daemon subprocesses, real sockets on 127.0.0.1, one SQLite file: every reading stored
exactly once and every ACKed one present with two workers, connections spread over both,
SIGTERM stopping every process, a worker killed mid-stream losing nothing ACKed (its agents
reconnect, the daemon starts it again), and a bad worker count refused in one line.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from collector.storage.sqlite import maintainer
from collector.web.metrics import Metrics
from tests.collector.wireclient import CollectorProcess
from tests.reliability.harness import ENV, Streamer, add_devices, assert_exactly_once, stored

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="SO_REUSEPORT: Linux only")

PIDS_RE = re.compile(r"ingest workers started count=(\d+) pids=([\d,]+)")
WORKER_RE = re.compile(r'telemetry_ingest_worker_(\w+)\{worker="(\d+)",pid="(\d+)"\} (\d+)')


def pids(p: CollectorProcess) -> list[int]:
    """The daemon's pid, then each extra worker's, from its start-up line."""
    m = PIDS_RE.search(p.log)
    assert m, p.log
    return [int(x) for x in m.group(2).split(",")]


def scrape(p: CollectorProcess) -> str:
    assert p.http is not None
    with urllib.request.urlopen(f"http://{p.http[0]}:{p.http[1]}/metrics", timeout=10) as r:
        return str(r.read().decode())


def per_worker(text: str, what: str) -> dict[int, int]:
    return {int(w): int(v) for name, w, _pid, v in WORKER_RE.findall(text) if name == what}


def total(text: str, name: str) -> int:
    m = re.search(rf"^{name} (\d+)$", text, re.MULTILINE)
    assert m, name
    return int(m.group(1))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (not yet reaped by its parent) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(pred: object, what: str, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.05)  # polling a condition with a deadline, not a synchronisation sleep
    raise AssertionError(f"timed out waiting for {what}")


def test_two_workers_store_every_reading_once_and_share_the_connections(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    with CollectorProcess(db, "--ingest-workers", "2") as p:
        assert len(pids(p)) == 2
        tokens = add_devices(db, [f"dev-{i:02d}" for i in range(16)])
        port = [p.ingest[1]]
        streamers = [Streamer(d, t, 40, port) for d, t in tokens.items()]
        for s in streamers:
            s.start()
        for s in streamers:
            s.join(90)
        assert not any(s.is_alive() for s in streamers)
        assert all(s.acked_seq == 40 for s in streamers), [s.last_error for s in streamers]
        # The workers report every METRICS_PUSH_S: wait for the totals to add up.
        want = 16 * 40 * Streamer.SENSORS
        wait_until(
            lambda: total(scrape(p), "telemetry_readings_accepted_total") == want,
            "the summed counters",
        )
        text = scrape(p)
        shares = per_worker(text, "readings_accepted_total")
        # 16 connections hashed over two listeners: all on one has odds of 2 in 65,536.
        assert set(shares) == {0, 1} and all(n > 0 for n in shares.values()), shares
        assert sum(shares.values()) == want
        assert total(text, "telemetry_connections_total") == 16
        # Each process's log lines name it: the worker's carry "[1]".
        assert "collector.ingest.server[1]: connected device=" in p.log
        assert "collector.ingest.server: connected device=" in p.log
        everyone = pids(p)
        assert p.terminate(timeout=20) == 0
        assert not any(alive(pid) for pid in everyone)
    expected: dict[tuple[str, str], int] = {}
    for s in streamers:
        expected.update(s.expected())
    assert_exactly_once(stored(db), expected)


def test_sigterm_stops_every_worker_gracefully(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    p = CollectorProcess(db, "--ingest-workers", "3").start()
    try:
        everyone = pids(p)
        assert len(everyone) == 3 and all(alive(pid) for pid in everyone)
        tokens = add_devices(db, [f"d{i}" for i in range(6)])
        streamers = [Streamer(d, t, 10_000, [p.ingest[1]], pace_s=0.01) for d, t in tokens.items()]
        for s in streamers:
            s.start()
        wait_until(lambda: all(s.acked_seq >= 3 for s in streamers), "streams under way")
        # The bound is the daemon's own: shutdown_timeout_s plus the workers' kill grace.
        assert p.terminate(timeout=20) == 0
        assert not any(alive(pid) for pid in everyone)
        assert p.log.count("ingest worker stopped index=") == 2
    finally:
        p.kill()
        for s in streamers:
            s.stop_flag.set()
    for s in streamers:
        s.join(30)
    # Whatever was ACKed before the stop is stored, once.
    st = stored(db)
    for s in streamers:
        for key in s.expected():
            got = sorted(st.ints(key))
            assert got[: s.acked_seq] == list(range(1, s.acked_seq + 1)), key
            assert len(got) == len(set(got)), key


def test_a_killed_worker_loses_nothing_acked_and_is_started_again(tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    batches = 150
    with CollectorProcess(db, "--ingest-workers", "2") as p:
        daemon_pid, worker_pid = pids(p)
        tokens = add_devices(db, [f"k{i:02d}" for i in range(12)])
        streamers = [Streamer(d, t, batches, [p.ingest[1]], pace_s=0.02) for d, t in tokens.items()]
        for s in streamers:
            s.start()
        # Mid-stream, with connections on the worker: kill it without warning.
        wait_until(
            lambda: (
                per_worker(scrape(p), "connections_open").get(1, 0) > 0
                and all(s.acked_seq >= 5 for s in streamers)
            ),
            "connections on the worker",
        )
        os.kill(worker_pid, signal.SIGKILL)
        wait_until(lambda: "starting it again" in p.log, "the worker's restart")
        wait_until(lambda: PIDS_RE.search(p.log) is not None, "pids")
        for s in streamers:
            s.join(120)
        assert all(s.acked_seq == batches for s in streamers), [s.last_error for s in streamers]
        assert sum(s.reconnects for s in streamers) > 0
        text = scrape(p)
        assert total(text, "telemetry_ingest_worker_restarts_total") == 1
        new_pids = {int(pid) for _n, w, pid, _v in WORKER_RE.findall(text) if w == "1"}
        assert new_pids and worker_pid not in new_pids
        assert alive(daemon_pid)
        assert p.terminate(timeout=20) == 0
    expected: dict[tuple[str, str], int] = {}
    for s in streamers:
        expected.update(s.expected())
    assert_exactly_once(stored(db), expected)


def test_sighup_reaches_the_workers(tmp_path: Path) -> None:
    with CollectorProcess(tmp_path / "h.db", "--ingest-workers", "2") as p:
        assert p.proc is not None
        p.proc.send_signal(signal.SIGHUP)
        wait_until(
            lambda: (
                "collector.reload: reloaded config" in p.log
                and "collector.reload[1]: reloaded config" in p.log
            ),
            "both reload lines",
        )
        assert p.terminate(timeout=20) == 0


@pytest.mark.parametrize(
    ("args", "file_text", "needle"),
    [
        (["--ingest-workers", "0"], None, "setting 'ingest_workers' (command line): expected"),
        ([], "ingest_workers = 0\n", "setting 'ingest_workers' (config file"),
        (["--ingest-workers", "1000"], None, "setting 'ingest_workers': at most"),
    ],
    ids=["flag-zero", "file-zero", "too-many"],
)
def test_a_bad_worker_count_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], file_text: str | None, needle: str
) -> None:
    if file_text is not None:
        cfg = tmp_path / "c.toml"
        cfg.write_text(file_text)
        args = [*args, "--config", str(cfg)]
    out = subprocess.run(
        [sys.executable, "-m", "collector", "collector", "--db", str(tmp_path / "x.db"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], out.stderr


def test_file_turns_pickle_and_exclude_each_other(tmp_path: Path) -> None:
    import pickle
    import threading

    turns = maintainer.FileTurns(str(tmp_path / "x.db"))
    other = pickle.loads(pickle.dumps(turns))
    assert other.paths == turns.paths
    # Two processes' worth of lock files: a second open file description waits.
    order: list[str] = []
    with turns.writer():
        t = threading.Thread(target=lambda: _take(other, order))
        t.start()
        t.join(0.2)
        order.append("first done")
    t.join(10)
    assert order == ["first done", "second"]


def _take(turns: maintainer.FileTurns, order: list[str]) -> None:
    # Unpickled: it opens the lock files itself, as another process would.
    with turns.writer():
        order.append("second")


def test_metrics_snapshots_add_up() -> None:
    import pickle

    a, b = Metrics(), Metrics()
    a.accepted, b.accepted = 3, 4
    a.device("x").accepted, b.device("x").accepted = 1, 2
    a.commit_seconds.observe(0.002)
    b.refused("max_connections")
    b.queue_depth = lambda: 5
    total_m = Metrics()
    total_m.add(a)
    total_m.add(pickle.loads(pickle.dumps(b.snapshot())))
    assert (total_m.accepted, total_m.devices["x"].accepted) == (7, 3)
    assert total_m.commit_seconds.count == 1
    assert total_m.connections_refused == {"max_connections": 1}
    assert total_m.queue_depth() == 5
