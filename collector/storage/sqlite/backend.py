"""`SQLiteStorage`: the storage interface over one SQLite file, by delegation.

Thin on purpose: every method calls the module that already does the work (`devices`,
`batchstore`, `scan`, `retention`) with a connection of the right kind, so behaviour is
exactly theirs. The write connection (ingest and administration writes) is opened on first
use and may be used by one thread at a time, as the interface says; every read opens its own
read-only connection, so reads run beside the writer and beside each other.

Series resolution and the dead-letter listing are `series`, the tail cursor `tail`, the
replay loop `replay`, the writer's session `writesession`.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeVar, cast

from collector.storage.interface import (
    ALL_DEAD_LETTERS,
    Agg,
    AuthResult,
    DeadLetterRecord,
    Device,
    DeviceRecord,
    Filters,
    MaintenanceHook,
    Order,
    PreparedBatch,
    Preparer,
    RejectedFilter,
    ReplayResult,
    Row,
    SeriesInfo,
    Session,
    SessionStart,
    StorageError,
    StorageStats,
    StoreResult,
    Value,
)
from collector.storage.sqlite import (
    devices,
    retention,
    scan,
    series,
    storagestats,
    store,
    transfer,
)
from collector.storage.sqlite.batchstore import BatchStore
from collector.storage.sqlite.maintainer import Maintainer, WriterLink
from collector.storage.sqlite.replay import replay_rejected
from collector.storage.sqlite.tail import Tail
from collector.storage.sqlite.writesession import SQLiteWriteSession

_T = TypeVar("_T")


class SQLiteStorage:
    """The `collector.storage.interface.Storage` of one SQLite file (migrated on open)."""

    def __init__(
        self, path: str | Path, *, synchronous: store.Synchronous = "FULL", readonly: bool = False
    ) -> None:
        self.path = Path(path)
        self.synchronous: store.Synchronous = synchronous
        # Migrations this open applied (none when the file was current or `readonly`).
        self.migrations_applied: list[str] = [] if readonly else list(store.migrate(self.path))
        if readonly:
            _check_schema(self.path)
        self._conn: sqlite3.Connection | None = None
        self._batches = BatchStore()
        self._lock = threading.Lock()
        self._maintainer: Maintainer | None = None
        # The writer's side of a maintainer: this process's own, or another's (joined).
        self._link: WriterLink | None = None

    def _write(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = store.connect(
                self.path, synchronous=self.synchronous, check_same_thread=False
            )
        return self._conn

    def _read(self) -> sqlite3.Connection:
        return store.connect(self.path, readonly=True)

    # ------------------------------------------------------------ ingest

    def authenticate(
        self, name: str, token: str, now_ns: int, *, allow_unknown: bool = False
    ) -> AuthResult:
        if not allow_unknown:  # reads only: a connection of its own, beside the writer
            conn = self._read()
            try:
                return devices.authenticate(conn, name, token, now_ns)
            finally:
                conn.close()
        with self._lock:
            return devices.authenticate(
                self._write(), name, token, now_ns, allow_unknown=allow_unknown
            )

    def open_session(
        self, device_id: int, stream: str, now_ns: int, *, spool_dropped: int = 0
    ) -> SessionStart:
        with self._lock:
            conn = self._write()
            if spool_dropped:
                conn.execute(
                    f"UPDATE {store.DEVICES} SET spool_dropped = spool_dropped + ? WHERE id = ?",
                    (spool_dropped, device_id),
                )
            return SessionStart(*devices.open_session(conn, device_id, stream, now_ns))

    def store(self, group: Sequence[tuple[Session | int, PreparedBatch]]) -> StoreResult:
        with self._lock:
            outcomes, stored = self._batches.store(self._write(), group)
        return StoreResult(outcomes, stored)

    # ------------------------------------------------------------ read side

    def resolve_series(self, filters: Filters, *, after_id: int = 0) -> list[SeriesInfo]:
        conn = self._read()
        try:
            return series.resolve_series(conn, filters, after_id=after_id)
        finally:
            conn.close()

    def read_range(
        self,
        series_ids: Sequence[int],
        since_ns: int | None,
        until_ns: int | None,
        *,
        order: Order = "asc",
        limit: int | None = None,
    ) -> Iterator[tuple[int, int, Value]]:
        conn = self._read()
        try:
            rows = scan.read_range(conn, series_ids, since_ns, until_ns, order=order, limit=limit)
        except BaseException:
            conn.close()
            raise
        return _closing(conn, rows)

    def aggregate(
        self,
        series_ids: Sequence[int],
        since_ns: int | None,
        until_ns: int | None,
        every_ns: int,
        agg: Agg,
    ) -> Iterator[tuple[int, int, float | int | None]]:
        conn = self._read()
        try:
            rows = scan.aggregate(conn, series_ids, since_ns, until_ns, every_ns, agg)
        except BaseException:
            conn.close()
            raise
        return _closing(conn, rows)

    def latest(self, series_ids: Sequence[int] | None = None) -> list[tuple[int, int, Value]]:
        conn = self._read()
        try:
            return scan.latest(conn, series_ids)
        finally:
            conn.close()

    def tail(self, filters: Filters) -> _Tail:
        # Its own connection for the cursor's life; polled from whichever worker thread
        # runs the next poll (the HTTP stream's asyncio.to_thread), one poll at a time.
        conn = store.connect(self.path, readonly=True, check_same_thread=False)
        try:
            return _Tail(conn, Tail.start(conn, filters))
        except BaseException:
            conn.close()
            raise

    def rejected(self, which: RejectedFilter = ALL_DEAD_LETTERS) -> list[Row]:
        conn = self._read()
        try:
            return list(series.list_rejected(conn, which))
        finally:
            conn.close()

    def stats(self) -> StorageStats:
        try:
            return storagestats.read(self.path)
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(str(exc)) from exc

    # ------------------------------------------------------------ administration

    def add_device(self, name: str, now_ns: int, *, token: str | None = None) -> tuple[Device, str]:
        with self._lock:
            return devices.add_device(self._write(), name, now_ns, token=token)

    def list_devices(self) -> list[Device]:
        conn = self._read()
        try:
            return devices.list_devices(conn)
        finally:
            conn.close()

    def device_named_by_token(self, token: str) -> str | None:
        conn = self._read()
        try:
            return devices.name_by_token(conn, token)
        finally:
            conn.close()

    def forward_key(self, name: str) -> tuple[Device, str] | None:
        conn = self._read()
        try:
            return devices.forward_key(conn, name)
        finally:
            conn.close()

    def revoke_device(self, name: str, now_ns: int) -> Device:
        with self._lock:
            return devices.revoke_device(self._write(), name, now_ns)

    def apply_retention(self, cutoff_ns: int) -> None:
        with self._lock:
            retention.apply_retention(self._write(), cutoff_ns)

    def replay_rejected(
        self, prepare: Preparer, *, devices: Sequence[str] = (), now_ns: int
    ) -> ReplayResult:
        return replay_rejected(str(self.path), prepare, devices=devices, now=now_ns)

    # ------------------------------------------------------------ copying between backends

    def export_devices(self) -> list[DeviceRecord]:
        conn = self._read()
        try:
            return transfer.export_devices(conn)
        finally:
            conn.close()

    def import_device(self, record: DeviceRecord) -> Device:
        with self._lock:
            return transfer.import_device(self._write(), record)

    def export_dead_letters(self) -> Iterator[DeadLetterRecord]:
        conn = self._read()
        try:
            rows = transfer.export_dead_letters(conn)
        except BaseException:
            conn.close()
            raise
        return _closing(conn, rows)

    def import_dead_letters(self, records: Sequence[DeadLetterRecord]) -> int:
        with self._lock:
            return transfer.import_dead_letters(self._write(), records)

    # ------------------------------------------------------------ the daemon

    def writer_session(
        self, *, synchronous: str = "FULL", maintenance: MaintenanceHook | None = None
    ) -> SQLiteWriteSession:
        if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"unknown synchronous level {synchronous!r}")
        return SQLiteWriteSession(
            self.path,
            synchronous=cast(store.Synchronous, synchronous),
            maintenance=maintenance,
            maintainer=self._link,
        )

    def start_background(self, *, retention_ns: int | None, shared: bool = False) -> None:
        if self._maintainer is not None:
            return
        maintainer = Maintainer(
            os.path.abspath(self.path), retention_ns=retention_ns, shared=shared
        )
        maintainer.start()
        self._maintainer = maintainer
        self._link = maintainer.link

    def background_link(self) -> object | None:
        return self._maintainer.link if self._maintainer is not None else None

    def join_background(self, link: object | None) -> None:
        if link is not None and not isinstance(link, WriterLink):
            raise TypeError(f"not a link of this backend: {link!r}")
        self._link = link

    def check_background(self) -> None:
        if self._maintainer is not None:
            self._maintainer.restart_if_dead()

    def background_restarts(self) -> int:
        return self._maintainer.restarts if self._maintainer is not None else 0

    def close(self) -> None:
        if self._maintainer is not None:
            self._maintainer.stop()
            self._maintainer = None
        self._link = None
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class _Tail:
    """A tail.Tail bound to the read-only connection it polls."""

    def __init__(self, conn: sqlite3.Connection, tail: Tail) -> None:
        self._conn = conn
        self._tail = tail

    def poll(self) -> list[Row]:
        return self._tail.poll(self._conn)

    def rewind(self, ts_ns: int, series_id: int) -> None:
        self._tail.rewind(ts_ns, series_id)

    def close(self) -> None:
        self._conn.close()


def _check_schema(path: Path) -> None:
    """Raises StorageError when the file is not a telemetry database (sqlite3.Error when it
    cannot be opened at all)."""
    conn = store.connect(path, readonly=True)
    try:
        conn.execute(f"SELECT 1 FROM {store.SERIES} LIMIT 1").fetchall()
    except sqlite3.Error as exc:
        raise StorageError(f"{path} is not a telemetry database ({exc})") from exc
    finally:
        conn.close()


def _closing(conn: sqlite3.Connection, rows: Iterator[_T]) -> Iterator[_T]:
    """Yield `rows`, then close the connection they are read from (also when abandoned)."""
    try:
        yield from rows
    finally:
        conn.close()
