"""The one writer's session on a SQLite file (`collector.storage.interface.WriteSession`).

Owns the write connection of the ingest writer thread: HELLO authentication and sessions
(`devices`), the group-commit transaction (`batchstore.BatchStore`) and a maintenance hook
run between commits. When the maintenance process runs (`maintainer.Maintainer`), each
ingest transaction waits for its turn at the write lock, the stored batches' timestamps are
reported to it, and the writer leaves WAL checkpoints to it (a higher own threshold).

A sqlite3 error becomes `StorageError` (the transaction rolled back); no socket I/O here.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from collector.storage.interface import (
    AuthResult,
    MaintenanceHook,
    PreparedBatch,
    Session,
    SessionStart,
    StorageError,
    StoreResult,
)
from collector.storage.sqlite import devices, store
from collector.storage.sqlite.batchstore import BatchStore, rollback
from collector.storage.sqlite.maintainer import WRITER_WAL_AUTOCHECKPOINT, WriterLink


class SQLiteWriteSession:
    """The write connection of one writer thread; see the module docstring."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: store.Synchronous = "FULL",
        maintenance: MaintenanceHook | None = None,
        maintainer: WriterLink | None = None,
    ) -> None:
        try:
            self._conn = store.connect(path, synchronous=synchronous, check_same_thread=False)
            # Another process checkpointing the WAL lets the writer raise its own threshold.
            pages = (
                WRITER_WAL_AUTOCHECKPOINT
                if maintainer is not None
                else store.WAL_AUTOCHECKPOINT_PAGES
            )
            self._conn.execute(f"PRAGMA wal_autocheckpoint = {int(pages)}")
        except sqlite3.Error as exc:
            raise StorageError(str(exc)) from exc
        self._hook = maintenance
        self._maintainer = maintainer
        self._batches = BatchStore()
        self.maintains = maintenance is not None

    def authenticate(
        self, name: str, token: str, now_ns: int, *, allow_unknown: bool = False
    ) -> AuthResult:
        try:
            with self._turn():
                return devices.authenticate(
                    self._conn, name, token, now_ns, allow_unknown=allow_unknown
                )
        except sqlite3.Error as exc:
            raise StorageError(str(exc)) from exc

    def open_session(
        self, device_id: int, stream: str, now_ns: int, *, spool_dropped: int = 0
    ) -> SessionStart:
        try:
            with self._turn():
                if spool_dropped:
                    self._conn.execute(
                        f"UPDATE {store.DEVICES} SET spool_dropped = spool_dropped + ? "
                        "WHERE id = ?",
                        (spool_dropped, device_id),
                    )
                return SessionStart(*devices.open_session(self._conn, device_id, stream, now_ns))
        except sqlite3.Error as exc:
            raise StorageError(str(exc)) from exc

    def _turn(self) -> contextlib.AbstractContextManager[None]:
        # A HELLO writes too (last seen, the session's epoch): without its turn it would
        # wait in SQLite's busy handler, which rarely finds the lock free between the
        # back-to-back transactions of other writers.
        m = self._maintainer
        return m.writer_turn() if m is not None else contextlib.nullcontext()

    def store(self, group: Sequence[tuple[Session | int, PreparedBatch]]) -> StoreResult:
        m = self._maintainer
        try:
            with self._turn():
                outcomes, stored = self._batches.store(self._conn, group)
        except sqlite3.Error as exc:
            raise StorageError(str(exc)) from exc
        if m is not None:
            for b in stored:
                if b.ts:
                    m.note(b.ts)
            m.flush()  # which windows received readings: they wait to settle
        return StoreResult(outcomes, stored)

    def maintain(self, now_ns: int) -> bool:
        if self._hook is None:
            return False
        conn = self._conn
        try:
            more = bool(self._hook(conn, now_ns))
            if conn.in_transaction:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            rollback(conn)
            raise StorageError(str(exc)) from exc
        return more

    def close(self) -> None:
        self._conn.close()
