"""`open_storage` opens the backend a database string names."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.storage.factory import is_postgres_url, open_storage
from collector.storage.sqlite.backend import SQLiteStorage
from tests.storage.pgserver import throwaway_database


def test_a_path_opens_sqlite_and_a_missing_one_is_not_created_read_only(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_storage(str(tmp_path / "none.db"), readonly=True)
    assert not (tmp_path / "none.db").exists()
    s = open_storage(str(tmp_path / "t.db"))
    try:
        assert isinstance(s, SQLiteStorage)
        s.add_device("d", 1)
    finally:
        s.close()
    ro = open_storage(str(tmp_path / "t.db"), readonly=True)
    try:
        assert [d.name for d in ro.list_devices()] == ["d"]
    finally:
        ro.close()


def test_a_postgres_url_opens_postgres() -> None:
    from collector.storage.postgres.backend import PostgresStorage

    assert is_postgres_url("postgres://h/db") and is_postgres_url("PostgreSQL://h/db")
    assert not is_postgres_url("/var/lib/telemetry/postgres.db")
    with throwaway_database() as url:
        s = open_storage(url)
        try:
            assert isinstance(s, PostgresStorage)
            assert s.add_device("d", 1)[0].name == "d"
        finally:
            s.close()
