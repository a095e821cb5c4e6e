"""`telemetry demo` prints the dashboard's address first, and the dashboard answers there."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.reliability.harness import wait_for


def _get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.headers["Content-Type"], resp.read()


def test_demo_prints_the_dashboard_url_first_and_serves_it_until_ctrl_c(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "collector", "demo", "--agents", "1", "--quiet",
         "--db", str(tmp_path / "demo.db")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        # As in a terminal: SIGINT raises KeyboardInterrupt (a background job would ignore it).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        first = proc.stdout.readline()
        m = re.fullmatch(r"dashboard: (http://127\.0\.0\.1:\d+/)\n", first)
        assert m, first
        url = m.group(1)
        status, ctype, body = _get(url)
        assert status == 200 and ctype.startswith("text/html")
        assert b"/dashboard/app.js" in body

        def has_readings() -> bool:
            devices = json.loads(_get(url + "api/v1/devices")[2])["devices"]
            return any(d["readings_total"] > 0 for d in devices)

        wait_for(has_readings, "the demo agent's readings", within=60)
        proc.send_signal(signal.SIGINT)
        rest = proc.stdout.read()
        assert proc.wait(30) == 0, rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
