"""How SQLite writes the SQL it shares with the PostgreSQL backend (collector.storage.rows):
`?` placeholders, one per value of a list, the two-argument max(), and no row locks (the
write transaction, BEGIN IMMEDIATE, holds the database's write lock)."""

from __future__ import annotations

from typing import Final

from collector.storage.rows import Dialect
from collector.storage.sqlite import store

DIALECT: Final = Dialect(
    ph="?",
    arrays=False,
    greatest="max",
    lock_row="",
    devices=store.DEVICES,
    streams=store.STREAMS,
    rejected=store.REJECTED,
)
