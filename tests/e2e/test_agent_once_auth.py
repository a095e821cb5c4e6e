"""`telemetry agent --once` against a real collector that refuses the device's token.

A refused token cannot fix itself by waiting, so a one-shot run (cron, a provisioning
script) must end with a non-zero status and one line saying what to fix, instead of retrying
forever. The long-running agent keeps retrying (an operator may fix the registry).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.collector.wireclient import CollectorProcess

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def _config(tmp: Path, port: int, device: str, token: str) -> Path:
    path = tmp / f"{device}.toml"
    path.write_text(
        f'[agent]\ndevice_id = "{device}"\ntoken = "{token}"\n'
        f'[collector]\naddress = "127.0.0.1:{port}"\nbackoff_initial_ms = 50\n'
        f'[spool]\npath = "{tmp / (device + ".spool.db")}"\n'
        '[[inputs.simulated]]\nname = "t"\nkind = "temperature"\nwaveform = "constant"\n'
    )
    return path


def _once(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agents", "--config", str(config), "--once"],
        capture_output=True,
        text=True,
        timeout=20,  # below the 15-30 s wait a retry after a refusal would take
        env=ENV,
        check=False,
    )


def test_once_with_a_refused_token_exits_non_zero_with_one_clear_line(tmp_path: Path) -> None:
    with CollectorProcess(tmp_path / "c.db") as daemon:
        daemon.add_device("once-1")
        res = _once(_config(tmp_path, daemon.ingest[1], "once-1", "not-the-token"))
        assert res.returncode != 0
        errors = [line for line in res.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1, res.stderr
        assert "refused" in errors[0] and "once-1" in errors[0]
        assert "device_id" in errors[0] and "token" in errors[0]
        assert "Traceback" not in res.stderr
        assert res.stdout == ""


def test_once_with_a_good_token_exits_zero(tmp_path: Path) -> None:
    with CollectorProcess(tmp_path / "c.db") as daemon:
        token = daemon.add_device("once-2")
        res = _once(_config(tmp_path, daemon.ingest[1], "once-2", token))
        assert res.returncode == 0, res.stderr
