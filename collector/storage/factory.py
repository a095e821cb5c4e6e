"""Choosing a backend: `open_storage(db)` opens the `Storage` a database string names.

A `postgresql://` or `postgres://` URL names the PostgreSQL backend, which this build does
not include: it is refused with a ConfigError. Anything else is a path to an SQLite file
(`collector.storage.sqlite`). The daemon and the commands name no backend: they call this.

Errors, whatever the backend: StorageError when the database cannot be opened (or, read-only,
is not a telemetry database), with a message the callers put after the setting's name.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final

from collector.errors import ConfigError
from collector.storage.interface import Storage, StorageError

POSTGRES_SCHEMES: Final = ("postgresql://", "postgres://")


def is_postgres_url(db: str) -> bool:
    """True when `db` names a PostgreSQL database rather than an SQLite file."""
    return db.lower().startswith(POSTGRES_SCHEMES)


def open_storage(db: str, *, readonly: bool = False) -> Storage:
    """Open the storage `db` names (SQLite: migrated unless `readonly`; read-only, a file
    that is not a telemetry database is refused).

    Raises ConfigError for a URL of a backend this build lacks, FileNotFoundError for a
    read-only SQLite path that does not exist (nothing is created then), StorageError when
    the storage cannot be opened."""
    if is_postgres_url(db):
        raise ConfigError(
            f"setting 'db': {db.split('://', 1)[0]}:// needs the PostgreSQL backend, "
            "which is not installed in this build"
        )
    from collector.storage.sqlite.backend import SQLiteStorage

    path = Path(db)
    if readonly and not path.exists():
        raise FileNotFoundError(f"no database at {db}")
    try:
        return SQLiteStorage(path, readonly=readonly)
    except (sqlite3.Error, OSError) as exc:
        what = db if readonly else f"database {db!r}"
        raise StorageError(f"cannot open {what}: {exc}") from exc
