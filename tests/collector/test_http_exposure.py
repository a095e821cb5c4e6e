"""The HTTP API never serves readings off loopback without a read token."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tests.collector.wireclient import CollectorProcess


def _check(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "collector",
            "collector",
            "--db",
            str(tmp_path / "t.db"),
            "--listen",
            "127.0.0.1:0",
            *args,
            "--check-config",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_non_loopback_http_without_token_is_refused_in_one_line(tmp_path: Path) -> None:
    res = _check(tmp_path, "--http", "0.0.0.0:0")
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "http_token" in res.stderr


def test_non_loopback_http_with_token_or_loopback_without_is_fine(tmp_path: Path) -> None:
    assert (
        _check(tmp_path, "--http", "0.0.0.0:0", env={"TELEMETRY_HTTP_TOKEN": "s3cret"}).returncode
        == 0
    )
    assert _check(tmp_path, "--http", "127.0.0.1:0").returncode == 0
    assert _check(tmp_path, "--http", "off").returncode == 0


def test_read_token_covers_the_devices_route_too(tmp_path: Path) -> None:
    with CollectorProcess(tmp_path / "t.db", env={"TELEMETRY_HTTP_TOKEN": "s3cret"}) as daemon:
        daemon.add_device("pump-1")
        assert daemon.http is not None
        base = f"http://{daemon.http[0]}:{daemon.http[1]}"
        for path in ("/api/v1/devices", "/api/v1/series"):
            try:
                urllib.request.urlopen(base + path, timeout=10)
                raise AssertionError(f"{path} answered without the read token")
            except urllib.error.HTTPError as exc:
                assert exc.code == 401
        with urllib.request.urlopen(base + "/healthz", timeout=10) as resp:
            assert resp.status == 200
        res = subprocess.run(
            [sys.executable, "-m", "collector", "devices", "--url", base, "--format", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "TELEMETRY_TOKEN": "s3cret"},
        )
        assert res.returncode == 0, res.stderr
        assert [d["device"] for d in json.loads(res.stdout)] == ["pump-1"]
