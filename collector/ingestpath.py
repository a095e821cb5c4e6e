"""One ingest path from the config: kinds -> validator -> TLS -> storage -> writer -> server.

The daemon process (`collector.daemon.serve`) and each extra ingest worker
(`collector.workers`) run the same chain, so it is built here once (`build_ingest`). What
differs between the two is a parameter, so the copies cannot drift apart:

* who runs the backend's maintenance (`StartMaintenance`: the daemon starts it and watches
  it; `HookMaintenance`: a test's hook in the writer thread instead; `JoinMaintenance`: a
  worker's writer takes turns with the daemon's);
* whether the listener shares its port with the other processes (SO_REUSEPORT);
* how a writer that cannot start is reported (a worker says so as a `db` setting error,
  its one log line before exit code 2; the daemon passes the storage's own error on);
* whether "database ready" is logged, and by whom (the daemon says it once for all).

Listening, signals, SIGHUP's reload loop and shutdown stay with the callers: they differ
more than they agree. This module owns no protocol, SQL or HTTP handler code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from collector.config import Config
from collector.errors import ConfigError
from collector.ingest.prepare import Ingest
from collector.ingest.server import Server
from collector.ingest.writer import Maintenance, Writer
from collector.reload import Reloader
from collector.storage.factory import open_storage
from collector.storage.interface import Storage, StorageError
from collector.tls import SwappableContext, TlsFileError, server_context
from collector.web.metrics import Metrics
from schemas.kinds import KindFileError, KindSpec, load_kinds_file
from schemas.readings import ReadingValidator

# How often the daemon checks that the maintenance process is alive.
WATCHDOG_S = 5.0


def load_kinds(cfg: Config) -> tuple[KindSpec, ...]:
    """The user-defined kinds named by the config. Raises ConfigError."""
    if cfg.kinds is None:
        return ()
    try:
        kinds = load_kinds_file(cfg.kinds)
        ReadingValidator(kinds)  # also rejects clashes with built-in kinds
    except KindFileError as exc:
        raise ConfigError(f"setting 'kinds': {exc}") from None
    return kinds


def tls_context(cfg: Config) -> ssl.SSLContext | None:
    """The ingest listener's TLS context (None: plain TCP). Raises ConfigError.

    The certificate, key and client CA are loaded now, so a missing, unreadable or
    mismatched file is one line naming the setting, not a failure at the first handshake.
    """
    if cfg.tls_cert is None or cfg.tls_key is None:
        return None
    try:
        return server_context(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
    except TlsFileError as exc:
        raise ConfigError(
            f"setting 'tls_{exc.which}': cannot load {exc.path}: {exc.detail}"
        ) from None


@dataclass(frozen=True, slots=True)
class StartMaintenance:
    """This process starts the backend's own maintenance (SQLite: a process of its own) and
    restarts it if it dies. `shared`: writers in other processes will join it."""

    shared: bool


@dataclass(frozen=True, slots=True)
class HookMaintenance:
    """A hook run in the writer thread replaces the backend's maintenance (tests)."""

    hook: Maintenance


@dataclass(frozen=True, slots=True)
class JoinMaintenance:
    """An ingest worker: its writer cooperates with the maintenance and the writers the
    daemon process started (`Storage.background_link()` there; None: nothing to join)."""

    link: object | None


MaintenanceMode = StartMaintenance | HookMaintenance | JoinMaintenance


@dataclass(frozen=True, slots=True)
class IngestPath:
    """The parts of a started ingest path; the caller listens with `server` and closes
    `writer`, then `storage`, at the end (and cancels `watchdog`)."""

    kinds: tuple[KindSpec, ...]
    ingest: Ingest
    ssl_context: ssl.SSLContext | None
    storage: Storage
    metrics: Metrics
    writer: Writer
    server: Server
    reloader: Reloader
    # Restarts the maintenance when it dies (StartMaintenance only).
    watchdog: asyncio.Task[None] | None


async def build_ingest(
    cfg: Config,
    *,
    maintenance: MaintenanceMode,
    reuse_port: bool,
    writer_error_as_config: bool,
    ready_log: logging.Logger | None,
) -> IngestPath:
    """Load the kinds and the TLS files, open the storage, start its maintenance as
    `maintenance` says and the writer; the server is built, not yet listening.

    Raises ConfigError for a bad setting. A writer that cannot start (StorageError,
    ValueError) closes the storage and is raised as it is, or as the `db` setting's
    ConfigError with `writer_error_as_config`. `ready_log` says "database ready" once the
    storage is open (None: nothing)."""
    loop = asyncio.get_running_loop()
    kinds = load_kinds(cfg)
    ingest = Ingest(ReadingValidator(kinds))
    ssl_ctx = tls_context(cfg)
    tls_swap = SwappableContext(ssl_ctx) if ssl_ctx is not None else None
    try:
        storage = open_storage(cfg.db)
    except (StorageError, OSError) as exc:
        raise ConfigError(f"setting 'db': {exc}") from None
    if ready_log is not None:
        ready_log.info("database ready db=%s", cfg.db)
    metrics = Metrics()
    lim = cfg.limits
    # The writer's session takes turns with the backend's maintenance, wherever it runs.
    watchdog: asyncio.Task[None] | None = None
    hook: Maintenance | None = None
    match maintenance:
        case StartMaintenance(shared=shared):
            try:
                storage.start_background(retention_ns=cfg.retention_ns, shared=shared)
            except OSError as exc:  # e.g. no /dev/shm for its locks
                storage.close()
                raise ConfigError(f"cannot start the maintenance process: {exc}") from None
            metrics.maintainer_restarts = storage.background_restarts
            watchdog = asyncio.create_task(_watch(storage), name="maintainer-watchdog")
        case HookMaintenance():
            hook = maintenance.hook
        case JoinMaintenance(link=link):
            storage.join_background(link)

    def committed(seconds: float) -> None:
        call_soon(loop, metrics.commit_seconds.observe, seconds)

    writer = Writer(
        storage,
        synchronous=cfg.synchronous,
        queue_rows=lim.queue_rows,
        txn_max_rows=lim.txn_max_rows,
        allow_unknown_devices=cfg.allow_unknown_devices,
        maintenance=hook,
        on_commit=committed,
    )
    metrics.queue_depth = writer.queue_depth
    try:
        await writer.start()
    except (StorageError, ValueError) as exc:
        if watchdog is not None:
            watchdog.cancel()
        await asyncio.to_thread(storage.close)
        if writer_error_as_config:
            raise ConfigError(f"setting 'db': {exc}") from None
        raise
    proxy_from = cfg.proxy_networks if cfg.proxy_protocol else None
    server = Server(
        writer,
        ingest,
        metrics,
        lim,
        ssl_context=ssl_ctx,
        proxy_from=proxy_from,
        reuse_port=reuse_port,
    )
    reloader = Reloader(cfg, kinds, server, writer, tls_swap)
    return IngestPath(kinds, ingest, ssl_ctx, storage, metrics, writer, server, reloader, watchdog)


async def _watch(storage: Storage) -> None:
    """Start the backend's maintenance again if it dies (compaction must not stop for good)."""
    while True:
        await asyncio.sleep(WATCHDOG_S)
        storage.check_background()


def call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[float], None], arg: float) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
        loop.call_soon_threadsafe(fn, arg)
