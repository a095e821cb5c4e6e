"""Choosing a backend: `open_storage(db)` opens the `Storage` a database string names.

A `postgresql://` or `postgres://` URL (libpq syntax, e.g.
`postgresql://telemetry@db.example/telemetry`) opens the PostgreSQL backend
(`collector.storage.postgres`); anything else is a path to an SQLite file
(`collector.storage.sqlite`). Backends are imported on demand, so an install without the
`postgres` extra never imports psycopg. The daemon and the commands name no backend: they
call this.

Errors, whatever the backend: StorageError when the database cannot be opened (or, read-only,
is not a telemetry database), with a message the callers put after the setting's name; a
password in a URL never appears in it.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Final

from collector.errors import ConfigError
from collector.storage.interface import Storage, StorageError

POSTGRES_SCHEMES: Final = ("postgresql://", "postgres://")
_PASSWORD: Final = re.compile(r"(://[^:/@]*):[^@/]*@")


def is_postgres_url(db: str) -> bool:
    """True when `db` names a PostgreSQL database rather than an SQLite file."""
    return db.lower().startswith(POSTGRES_SCHEMES)


def redacted(db: str) -> str:
    """`db` with the password of a URL replaced by `***` (for logs and error messages)."""
    return _PASSWORD.sub(r"\1:***@", db)


def open_storage(db: str, *, readonly: bool = False) -> Storage:
    """Open the storage `db` names: a PostgreSQL URL or an SQLite file path.

    `readonly`: the caller only reads (query commands). Nothing is created or migrated then,
    so a missing database is an error rather than a new empty one.
    Raises ConfigError for a PostgreSQL URL when the `postgres` extra is not installed,
    FileNotFoundError for a read-only SQLite path that does not exist, StorageError when the
    storage cannot be opened.
    """
    if is_postgres_url(db):
        try:
            import psycopg

            from collector.storage.postgres.backend import PostgresStorage
        except ImportError:
            raise ConfigError(
                f"setting 'db': {db.split('://', 1)[0]}:// needs the PostgreSQL backend: "
                "pip install 'sensor-telemetry[postgres]'"
            ) from None
        try:
            return PostgresStorage(db, readonly=readonly)
        except psycopg.Error as exc:
            why = " ".join(str(exc).split())  # libpq's messages span lines: one line here
            raise StorageError(f"cannot open database {redacted(db)!r}: {why}") from exc
    from collector.storage.sqlite.backend import SQLiteStorage

    path = Path(db)
    if readonly and not path.exists():
        raise FileNotFoundError(f"no database at {db}")
    try:
        return SQLiteStorage(path, readonly=readonly)
    except (sqlite3.Error, OSError) as exc:
        what = db if readonly else f"database {db!r}"
        raise StorageError(f"cannot open {what}: {exc}") from exc
