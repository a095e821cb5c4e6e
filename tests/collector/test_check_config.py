"""`telemetry collector --check-config`: what would fail at start is reported, all of it.

Run as a subprocess like a person would: every problem is one `error:` line on stderr and
the status is 2; a good config prints a short summary a person reads (no Python repr), and
never the HTTP read token.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector", "collector", *args, "--check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _errors(res: subprocess.CompletedProcess[str]) -> list[str]:
    lines = res.stderr.strip().splitlines()
    assert all("error:" in line for line in lines), res.stderr
    return lines


def test_database_directory_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    res = _check("--db", str(missing / "t.db"))
    assert res.returncode == 2, res.stdout
    (line,) = _errors(res)
    assert "setting 'db'" in line and str(missing) in line and "does not exist" in line
    assert res.stdout == ""
    assert not missing.exists()


def test_database_directory_that_is_not_writable_is_an_error() -> None:
    # Root may write anywhere, so as root the check runs as an unprivileged user; the
    # directory is made outside pytest's private (mode 0700) temporary tree.
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            if os.environ.get("CI") == "true":
                pytest.fail("setpriv is needed to run this test as root (Debian: util-linux)")
            pytest.skip("run as root: needs setpriv (Debian: apt-get install util-linux)")
        prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    base = Path(tempfile.mkdtemp(prefix="telemetry-ro-"))
    try:
        base.chmod(0o755)
        ro = base / "ro"
        ro.mkdir(mode=0o555)
        ro.chmod(0o555)
        res = subprocess.run(
            [*prefix, sys.executable, "-m", "collector", "collector", "--db", str(ro / "t.db"),
             "--check-config"],
            capture_output=True, text=True, timeout=60, check=False, cwd=str(ROOT),
        )  # fmt: skip
        assert res.returncode == 2, res.stderr
        (line,) = _errors(res)
        assert "setting 'db'" in line and str(ro) in line and "not writable" in line
    finally:
        shutil.rmtree(base)


def test_database_under_a_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_text("")
    res = _check("--db", str(tmp_path / "plain-file" / "t.db"))
    assert res.returncode == 2
    (line,) = _errors(res)
    assert "setting 'db'" in line and "not a directory" in line


def test_a_database_path_that_is_a_directory_is_an_error(tmp_path: Path) -> None:
    res = _check("--db", str(tmp_path))
    assert res.returncode == 2
    (line,) = _errors(res)
    assert "setting 'db'" in line and "is a directory" in line


def test_every_problem_is_one_line(tmp_path: Path) -> None:
    kinds = tmp_path / "kinds.toml"
    kinds.write_text('[kinds.wind]\ntype = "numbr"\n')
    res = _check(
        "--db",
        str(tmp_path / "gone" / "t.db"),
        "--kinds",
        str(kinds),
        "--tls-cert",
        str(tmp_path / "missing.pem"),
        "--tls-key",
        str(tmp_path / "missing.key"),
        "--http",
        "0.0.0.0:7879",
    )
    assert res.returncode == 2
    lines = _errors(res)
    assert len(lines) == 4, res.stderr
    text = "\n".join(lines)
    for setting in ("'db'", "'kinds'", "'tls_cert'", "'http_token'"):
        assert f"setting {setting}" in text, text


def test_a_good_config_prints_a_summary_a_person_reads(tmp_path: Path) -> None:
    kinds = tmp_path / "kinds.toml"
    kinds.write_text('[kinds.soil_moisture]\ntype = "number"\nunits = ["%"]\n')
    conf = tmp_path / "collector.toml"
    conf.write_text(
        f'db = "{tmp_path / "t.db"}"\nkinds = "{kinds}"\nhttp = "0.0.0.0:7879"\n'
        'http_token = "sekrit-read-token"\nretention = "30d"\n'
    )
    res = _check("--config", str(conf))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "Config(" not in out and "Limits(" not in out
    assert "sekrit-read-token" not in out
    assert str(conf) in out
    assert "0.0.0.0:7879" in out and "read token set" in out
    assert str(tmp_path / "t.db") in out and "created at start" in out
    assert "soil_moisture" in out
    assert "30d" in out
    assert len(out.splitlines()) <= 12
    assert not (tmp_path / "t.db").exists()
