"""The HTTP API never serves readings off loopback without a read token."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


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
