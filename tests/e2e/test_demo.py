"""`telemetry demo` runs the real collector and agents and leaves readings from each in the DB."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path


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
