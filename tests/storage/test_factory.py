"""collector.storage.factory.open_storage: the backend a `db` setting names, and how the
daemon and the read commands report a `db` they cannot use (run as a person would)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collector.storage.factory import open_storage
from collector.storage.interface import Filters, StorageError
from collector.storage.sqlite.backend import SQLiteStorage


def test_a_path_opens_sqlite_migrated_and_usable(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    storage = open_storage(str(path))
    try:
        assert isinstance(storage, SQLiteStorage)
        storage.add_device("dev-1", time.time_ns())
        assert [d.name for d in storage.list_devices()] == ["dev-1"]
    finally:
        storage.close()
    reader = open_storage(str(path), readonly=True)
    try:
        assert [d.name for d in reader.list_devices()] == ["dev-1"]
        assert reader.resolve_series(Filters()) == []
    finally:
        reader.close()


@pytest.mark.parametrize("readonly", [False, True])
def test_an_unreachable_postgresql_url_is_a_storage_error_without_its_password(
    readonly: bool,
) -> None:
    # Port 1 on the loopback address: refused at once, nothing leaves the machine.
    with pytest.raises(StorageError, match="cannot open database") as exc:
        open_storage("postgresql://u:secret@127.0.0.1:1/telemetry", readonly=readonly)
    assert "u:***@127.0.0.1:1" in str(exc.value) and "secret" not in str(exc.value)


def test_readonly_refuses_a_file_that_is_not_a_telemetry_database(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    sqlite3.connect(other).close()
    with pytest.raises(StorageError, match="is not a telemetry database"):
        open_storage(str(other), readonly=True)
    assert other.stat().st_size == 0  # read-only: nothing was created in it


def test_readonly_never_creates_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_storage(str(tmp_path / "missing.db"), readonly=True)
    assert not (tmp_path / "missing.db").exists()


def test_a_database_that_cannot_be_opened_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cannot open database"):
        open_storage(str(tmp_path))  # a directory


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def test_the_daemon_with_a_postgresql_url_exits_2_with_one_line() -> None:
    res = _run(
        "collector", "--db", "postgresql://u:secret@127.0.0.1:1/t",
        "--listen", "127.0.0.1:0", "--http", "off",
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert "setting 'db': cannot open database" in line and "secret" not in line


def test_a_read_command_with_a_postgresql_url_exits_2() -> None:
    res = _run("series", "--db", "postgresql://127.0.0.1:1/t")
    assert res.returncode == 2, res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert "cannot open" in line and "127.0.0.1:1" in line
