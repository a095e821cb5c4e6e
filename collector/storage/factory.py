"""`open_storage`: the backend a `db` setting names (a file path: SQLite).

The one place that maps a setting to a backend, so that the daemon and the commands never
name one. A `postgresql://` URL names the PostgreSQL backend, which this build does not
include: it is refused with a ConfigError.
"""

from __future__ import annotations

import sqlite3

from collector.errors import ConfigError
from collector.storage.interface import Storage, StorageError
from collector.storage.sqlite.backend import SQLiteStorage

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_storage(db: str, *, readonly: bool = False) -> Storage:
    """The storage `db` names, ready to use (SQLite: migrated unless `readonly`).

    Raises ConfigError for a URL of a backend this build lacks, StorageError when the
    storage cannot be opened."""
    if db.startswith(_POSTGRES_SCHEMES):
        raise ConfigError(
            f"setting 'db': {db.split('://', 1)[0]}:// needs the PostgreSQL backend, "
            "which is not installed in this build"
        )
    try:
        return SQLiteStorage(db, readonly=readonly)
    except (sqlite3.Error, OSError) as exc:
        what = db if readonly else f"database {db!r}"
        raise StorageError(f"cannot open {what}: {exc}") from exc
