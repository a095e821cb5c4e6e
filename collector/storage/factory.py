"""Choosing a backend: `open_storage(db)` opens the `Storage` a database string names.

A `postgresql://` or `postgres://` URL (libpq syntax, e.g.
`postgresql://telemetry@db.example/telemetry`) opens the PostgreSQL backend
(`collector.storage.postgres`); anything else is a path to an SQLite file
(`collector.storage.sqlite`). Backends are imported on demand, so an install without the
`postgres` extra never imports psycopg.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from collector.storage.interface import Storage

POSTGRES_SCHEMES: Final = ("postgresql://", "postgres://")


def is_postgres_url(db: str) -> bool:
    """True when `db` names a PostgreSQL database rather than an SQLite file."""
    return db.lower().startswith(POSTGRES_SCHEMES)


def open_storage(db: str, *, readonly: bool = False) -> Storage:
    """Open the storage `db` names: a PostgreSQL URL or an SQLite file path.

    `readonly`: the caller only reads (query commands, the HTTP API of a separate reader).
    Nothing is created or migrated then, so a missing database is an error rather than a
    new empty one.
    Raises FileNotFoundError for a read-only SQLite path that does not exist, and the
    backend's error (sqlite3.Error, psycopg.Error) when the database cannot be opened.
    """
    if is_postgres_url(db):
        from collector.storage.postgres.backend import PostgresStorage

        return PostgresStorage(db, readonly=readonly)
    from collector.storage.sqlite.backend import SQLiteStorage

    path = Path(db)
    if readonly and not path.exists():
        raise FileNotFoundError(f"no database at {db}")
    return SQLiteStorage(path)
