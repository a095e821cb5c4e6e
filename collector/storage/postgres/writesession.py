"""The one writer's session on PostgreSQL (`PostgresStorage.writer_session`).

It drives the storage's own write connection (`authenticate`, `open_session`, `store`, each
its own transaction under the streams' row locks: collector.storage.postgres.ingest) and
turns psycopg's errors into `StorageError`, so the writer answers RETRY and tries again with
the next group, as with SQLite. PostgreSQL needs no maintenance in the writer thread (its
upkeep thread makes partitions and applies retention), so `maintains` is False unless a
test hook is given, which then runs with the write connection.

`synchronous` maps to `synchronous_commit`: FULL and EXTRA wait for the WAL flush (ACK after
a durable commit); NORMAL and OFF do not (a server crash may lose the last commits, never
corrupt them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, TypeVar

import psycopg

from collector.storage.interface import (
    AuthResult,
    MaintenanceHook,
    PreparedBatch,
    Session,
    SessionStart,
    StorageError,
    StoreResult,
)

if TYPE_CHECKING:
    from collector.storage.postgres.backend import PostgresStorage

_T = TypeVar("_T")
_LEVELS: Final = {"OFF": "off", "NORMAL": "off", "FULL": "on", "EXTRA": "on"}


class PostgresWriteSession:
    """`collector.storage.interface.WriteSession` over a `PostgresStorage`."""

    def __init__(
        self,
        storage: PostgresStorage,
        *,
        synchronous: str = "FULL",
        maintenance: MaintenanceHook | None = None,
    ) -> None:
        if synchronous not in _LEVELS:
            raise ValueError(f"unknown synchronous level {synchronous!r}")
        self._storage = storage
        self._hook = maintenance
        self.maintains = maintenance is not None
        self._call(storage.set_synchronous_commit, _LEVELS[synchronous])

    def _call(self, fn: Callable[..., _T], *args: object, **kwargs: object) -> _T:
        try:
            return fn(*args, **kwargs)
        except psycopg.Error as exc:
            raise StorageError(" ".join(str(exc).split()) or type(exc).__name__) from exc

    def authenticate(
        self, name: str, token: str, now_ns: int, *, allow_unknown: bool = False
    ) -> AuthResult:
        return self._call(
            self._storage.authenticate, name, token, now_ns, allow_unknown=allow_unknown
        )

    def open_session(
        self, device_id: int, stream: str, now_ns: int, *, spool_dropped: int = 0
    ) -> SessionStart:
        return self._call(
            self._storage.open_session, device_id, stream, now_ns, spool_dropped=spool_dropped
        )

    def store(self, group: Sequence[tuple[Session | int, PreparedBatch]]) -> StoreResult:
        return self._call(self._storage.store, group)

    def maintain(self, now_ns: int) -> bool:
        if self._hook is None:
            return False
        return bool(self._call(self._storage.run_hook, self._hook, now_ns))

    def close(self) -> None:
        """The write connection belongs to the storage; `PostgresStorage.close` closes it."""
