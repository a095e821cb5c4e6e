"""`PostgresStorage`: the storage interface over one PostgreSQL database.

The writer (ingest: `authenticate`, `open_session`, `store`) uses one dedicated connection,
as the interface's one writer thread does; reads and administration take connections from a
small pool (psycopg_pool), so they run beside the writer and beside each other. Every
connection is in autocommit mode; each operation opens the transaction it needs.

On open (unless read-only) the schema is migrated and the day partitions from yesterday to
`schema.PARTITIONS_AHEAD_DAYS` ahead are made (`ensure_partitions`); the store path makes any
other day it needs. Several collectors may share one database: sessions fence each other
through the `streams` row lock (collector.storage.postgres.ingest).

psycopg errors (`psycopg.Error`) are this backend's storage errors.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Final, TypeVar

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool

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
from collector.storage.postgres import devices, reads, replay, schema, transfer
from collector.storage.postgres.ingest import GroupStore
from collector.storage.postgres.schema import Conn
from collector.storage.postgres.tail import PostgresTail
from collector.storage.postgres.writesession import PostgresWriteSession

_T = TypeVar("_T")

log = logging.getLogger(__name__)

# How often the upkeep thread (`start_background`) makes partitions ahead and applies
# retention: a day partition is made days before it is needed, so hourly is plenty.
BACKGROUND_INTERVAL_S: Final = 3600.0
# A server that does not answer fails an open (and each new connection) this soon.
CONNECT_TIMEOUT_S: Final = 10
# Reader connections kept open: the HTTP API and the query commands rarely need more.
POOL_MAX_CONNECTIONS: Final = 4
# A statement waits at most this long for a lock (a partition being attached, a stream row
# held by another collector's transaction) before failing, as SQLite's busy_timeout.
LOCK_TIMEOUT_MS: Final = 10_000


class PostgresStorage:
    """The `collector.storage.interface.Storage` of one PostgreSQL database."""

    def __init__(
        self,
        url: str,
        *,
        readonly: bool = False,
        pool_size: int = POOL_MAX_CONNECTIONS,
        now_ns: int | None = None,
    ) -> None:
        self.url = url
        self.readonly = readonly
        options = f"-c lock_timeout={LOCK_TIMEOUT_MS}"
        if readonly:
            options += " -c default_transaction_read_only=on"
        self._kwargs: dict[str, object] = {
            "autocommit": True,
            "options": options,
            "connect_timeout": CONNECT_TIMEOUT_S,
        }
        self._lock = threading.Lock()
        self._background: threading.Thread | None = None
        self._stopping = threading.Event()
        self._retention_ns: int | None = None
        self._restarts = 0
        self._conn: Conn | None = None
        self._store = GroupStore()
        if not readonly:
            self.ensure_partitions(time.time_ns() if now_ns is None else now_ns)
        else:
            # Fail now, in one line, when the server cannot be reached (the pool would only
            # say so after its 30 s timeout, at the first read).
            psycopg.connect(url, **self._kwargs).close()  # type: ignore[arg-type]  # psycopg's kwargs are untyped
        self._pool: ConnectionPool[psycopg.Connection[TupleRow]] = ConnectionPool(
            url, min_size=1, max_size=pool_size, kwargs=self._kwargs, open=True
        )

    def _write(self) -> Conn:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.url, **self._kwargs)  # type: ignore[arg-type]  # psycopg's kwargs are untyped
        return self._conn

    def set_synchronous_commit(self, level: str) -> None:
        """`synchronous_commit` of the write connection: "on" (durable before COMMIT returns)
        or "off" (the writer session's NORMAL / OFF)."""
        if level not in ("on", "off"):
            raise ValueError(f"synchronous_commit must be on or off, not {level!r}")
        with self._lock:
            self._write().execute(f"SET synchronous_commit = {level}")

    def run_hook(self, hook: MaintenanceHook, now_ns: int) -> bool | None:
        """Run a writer-session maintenance hook with the write connection (tests)."""
        with self._lock:
            return hook(self._write(), now_ns)

    def ensure_partitions(self, now_ns: int) -> list[int]:
        """Migrate, then make the day partitions around `now_ns` (yesterday to a few days
        ahead); returns the days created. Called on open; a scheduler may call it daily."""
        with self._lock:
            conn = self._write()
            schema.migrate(conn)
            today = schema.day_of(now_ns)
            days = range(today - 1, today + schema.PARTITIONS_AHEAD_DAYS + 1)
            created = schema.ensure_partitions(conn, days)
            self._store.days = None
            return created

    def _read(self, fn: Callable[..., _T], *args: object, **kwargs: object) -> _T:
        with self._pool.connection() as conn:
            return fn(conn, *args, **kwargs)

    def _stream(self, fn: Callable[..., Iterator[_T]], *args: object) -> Iterator[_T]:
        with self._pool.connection() as conn:
            yield from fn(conn, *args)

    # ------------------------------------------------------------ ingest

    def authenticate(
        self, name: str, token: str, now_ns: int, *, allow_unknown: bool = False
    ) -> AuthResult:
        with self._lock:
            return devices.authenticate(
                self._write(), name, token, now_ns, allow_unknown=allow_unknown
            )

    def open_session(
        self, device_id: int, stream: str, now_ns: int, *, spool_dropped: int = 0
    ) -> SessionStart:
        with self._lock:
            return SessionStart(
                *devices.open_session(
                    self._write(), device_id, stream, now_ns, spool_dropped=spool_dropped
                )
            )

    def store(self, group: Sequence[tuple[Session | int, PreparedBatch]]) -> StoreResult:
        with self._lock:
            outcomes, stored = self._store.store(self._write(), group)
        return StoreResult(outcomes, stored)

    # ------------------------------------------------------------ read side

    def resolve_series(self, filters: Filters, *, after_id: int = 0) -> list[SeriesInfo]:
        return self._read(reads.resolve_series, filters, after_id=after_id)

    def read_range(
        self,
        series_ids: Sequence[int],
        since_ns: int | None,
        until_ns: int | None,
        *,
        order: Order = "asc",
        limit: int | None = None,
    ) -> Iterator[tuple[int, int, Value]]:
        reads.check_range_args(order, limit)
        return self._stream(
            lambda conn: reads.read_range(
                conn, series_ids, since_ns, until_ns, order=order, limit=limit
            )
        )

    def aggregate(
        self,
        series_ids: Sequence[int],
        since_ns: int | None,
        until_ns: int | None,
        every_ns: int,
        agg: Agg,
    ) -> Iterator[tuple[int, int, float | int | None]]:
        reads.check_aggregate_args(every_ns, agg)
        return self._stream(reads.aggregate, series_ids, since_ns, until_ns, every_ns, agg)

    def latest(self, series_ids: Sequence[int] | None = None) -> list[tuple[int, int, Value]]:
        return self._read(reads.latest, series_ids)

    def tail(self, filters: Filters) -> PostgresTail:
        return PostgresTail(self._pool, filters)

    def rejected(self, which: RejectedFilter = ALL_DEAD_LETTERS) -> list[Row]:
        return self._read(reads.rejected, which)

    def stats(self) -> StorageStats:
        """PostgreSQL has no head/blocks split: `blocks` counts the readings' partitions and
        `db_bytes` is the database's size; the rest is 0."""
        try:
            with self._pool.connection() as conn:
                row = conn.execute(
                    "SELECT pg_database_size(current_database()), "
                    "(SELECT count(*) FROM pg_inherits WHERE inhparent = %s::regclass)",
                    (schema.READINGS,),
                ).fetchone()
        except psycopg.Error as exc:
            raise StorageError(str(exc)) from exc
        assert row is not None
        return StorageStats(0, None, int(row[1]), 0, int(row[0]), 0, 0)

    # ------------------------------------------------------------ administration

    def device_named_by_token(self, token: str) -> str | None:
        return self._read(devices.device_named_by_token, token)

    def forward_key(self, name: str) -> tuple[Device, str] | None:
        return self._read(devices.forward_key, name)

    def add_device(self, name: str, now_ns: int, *, token: str | None = None) -> tuple[Device, str]:
        return self._read(devices.add_device, name, now_ns, token=token)

    def list_devices(self) -> list[Device]:
        return self._read(devices.list_devices)

    def revoke_device(self, name: str, now_ns: int) -> Device:
        return self._read(devices.revoke_device, name, now_ns)

    def apply_retention(self, cutoff_ns: int) -> None:
        self._read(schema.drop_partitions_before, cutoff_ns)
        with self._lock:
            self._store.days = None  # read the partitions again before the next store

    def replay_rejected(
        self, prepare: Preparer, *, devices: Sequence[str] = (), now_ns: int
    ) -> ReplayResult:
        return self._read(replay.replay_rejected, prepare, devices=devices, now_ns=now_ns)

    # ------------------------------------------------------------ copying between backends

    def export_devices(self) -> list[DeviceRecord]:
        return self._read(transfer.export_devices)

    def import_device(self, record: DeviceRecord) -> Device:
        return self._read(transfer.import_device, record)

    def export_dead_letters(self) -> Iterator[DeadLetterRecord]:
        return self._stream(transfer.export_dead_letters)

    def import_dead_letters(self, records: Sequence[DeadLetterRecord]) -> int:
        return self._read(transfer.import_dead_letters, records)

    # ------------------------------------------------------------ the daemon

    def writer_session(
        self, *, synchronous: str = "FULL", maintenance: MaintenanceHook | None = None
    ) -> PostgresWriteSession:
        return PostgresWriteSession(self, synchronous=synchronous, maintenance=maintenance)

    def start_background(self, *, retention_ns: int | None, shared: bool = False) -> None:
        """A thread that makes day partitions ahead and applies retention (by dropping whole
        partitions) every `BACKGROUND_INTERVAL_S`."""
        if self._background is None:
            self._retention_ns = retention_ns
            self._background = self._start_thread()

    def background_link(self) -> object | None:
        return None  # the streams' row locks order writers of any number of processes

    def join_background(self, link: object | None) -> None:
        pass

    def check_background(self) -> None:
        if self._background is not None and not self._background.is_alive():
            self._restarts += 1
            self._background = self._start_thread()

    def background_restarts(self) -> int:
        return self._restarts

    def _start_thread(self) -> threading.Thread:
        t = threading.Thread(target=self._background_loop, name="telemetry-pg-upkeep", daemon=True)
        t.start()
        return t

    def _background_loop(self) -> None:
        while not self._stopping.is_set():
            now = time.time_ns()
            try:
                self.ensure_partitions(now)
                if self._retention_ns is not None:
                    self.apply_retention(now - self._retention_ns)
            except psycopg.Error as exc:
                log.warning("partition upkeep failed error=%s", exc)
            self._stopping.wait(BACKGROUND_INTERVAL_S)

    def close(self) -> None:
        self._stopping.set()
        if self._background is not None:
            self._background.join(timeout=5)
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        self._pool.close()
