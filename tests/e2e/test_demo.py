"""`telemetry demo` runs the real collector and agents and leaves readings from each in the DB."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil


def test_demo_stores_readings_from_every_agent_and_some_rejects(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "collector",
            "demo",
            "--duration",
            "8",
            "--agents",
            "4",
            "--db",
            str(db),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "collector: ingest 127.0.0.1:" in result.stdout
    assert "telemetry query" in result.stdout  # says how to look at the data
    # Tokens, spools and logs live beside the database, one folder per database file.
    assert sorted(p.name for p in (tmp_path / ".demo-demo").glob("*.token")) == [
        "greenhouse-1.token",
        "greenhouse-2.token",
        "power-meter-1.token",
        "tracker-1.token",
    ]
    conn = sqlite3.connect(db)
    per_device = dict(
        conn.execute(
            """SELECT d.name, COALESCE(SUM(s.count), 0) FROM devices d
               LEFT JOIN series s ON s.device_id = d.id GROUP BY d.name"""
        ).fetchall()
    )
    assert set(per_device) == {"greenhouse-1", "power-meter-1", "tracker-1", "greenhouse-2"}
    assert all(n > 0 for n in per_device.values()), per_device
    rejects = conn.execute(
        "SELECT d.name, r.code, r.path FROM rejected r JOIN devices d ON d.id = r.device_id"
    ).fetchall()
    assert rejects, "the tracker profile sends invalid readings on purpose"
    assert {name for name, _, _ in rejects} == {"tracker-1"}
    # Live output shows readings as they arrive.
    assert "greenhouse/air-temp" in result.stdout
    conn.close()


def test_demo_rejects_bad_arguments_with_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "collector",
            "demo",
            "--agents",
            "0",
            "--db",
            str(tmp_path / "x.db"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "error" in result.stderr


def test_ctrl_c_stops_agents_and_collector_and_exits_0(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "collector",
            "demo",
            "--agents",
            "2",
            "--db",
            str(tmp_path / "demo.db"),
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        # As in a terminal: SIGINT raises KeyboardInterrupt (a background job would ignore it).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        if "readings (Ctrl-C to stop)" in line or time.monotonic() > deadline:
            break
    demo = psutil.Process(proc.pid)
    assert len(demo.children()) == 3  # the collector and two agents
    # ... and the collector's own: its maintenance process and multiprocessing's tracker
    children = demo.children(recursive=True)
    assert len(children) == 5
    proc.send_signal(signal.SIGINT)
    rest = proc.stdout.read()
    assert proc.wait(30) == 0, rest
    proc.stdout.close()
    assert "readings from 2 devices" in rest
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive
