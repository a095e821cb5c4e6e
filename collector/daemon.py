"""Run the collector: migrate -> start the writer -> listen (TCP ingest + HTTP) -> serve.

Shutdown on SIGTERM/SIGINT runs the same steps in reverse within `shutdown_timeout_s`: stop
accepting, let every session answer the batches it already submitted and say BYE, commit
and close the database, stop HTTP. Under systemd (`NOTIFY_SOCKET` set) READY=1 is sent once
both listeners are up and STOPPING=1 when shutdown starts; the notification is a single
datagram, written here with the standard library.

The storage is whatever the `db` setting names (collector.storage.factory); the daemon talks
to it through collector.storage.interface only. The backend's own maintenance (SQLite:
compaction, retention, free-page reclaim in a process of its own) is started before the
writer and stopped after it (`Storage.start_background`, `Storage.close`);
`serve(maintenance=...)` runs a hook in the writer thread instead (tests use that seam).

This module wires components together; it owns no protocol, SQL or HTTP handler code.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from collector import reload as reloading
from collector.config import Config
from collector.errors import ConfigError
from collector.ingest.server import Server
from collector.ingest.writer import Maintenance
from collector.ingestpath import (
    HookMaintenance,
    StartMaintenance,
    build_ingest,
    load_kinds,
    tls_context,
)
from collector.inputs.listeners import Inputs
from collector.inputs.mapping import load_inputs
from collector.web import api as http_api
from collector.web.http import AppState, RouteRegistrar, create_app
from collector.web.metrics import Metrics
from collector.workers import IngestWorkers
from schemas.kinds import KindSpec
from schemas.readings import ReadingValidator

log = logging.getLogger(__name__)

HTTP_SHUTDOWN_S = 1.0
# The cyclic GC's thresholds. Python's default starts a collection every 700 net container
# allocations; decoding 100,000+ readings/s allocates millions, and the collections took
# over a third of the daemon's CPU (82 s -> 51 s for 8M readings; docs/benchmarks.md,
# "End-to-end ingest"). Ingest allocates little cyclic garbage, so collecting every 200,000
# costs a few MB of memory at most.
GC_THRESHOLDS = (200_000, 10, 10)


def sd_notify(state: str) -> bool:
    """Send one sd_notify(3) datagram when NOTIFY_SOCKET is set; True if sent."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # abstract namespace socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(addr)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("sd_notify failed socket=%s error=%s", addr, exc)
        return False
    return True


def check_db(cfg: Config) -> None:
    """The database file can be created or opened for writing. Raises ConfigError.

    SQLite writes its -wal and -shm files beside the database, so the directory itself must
    be writable, and it is not created: a mistyped path should not become a new database.
    A URL (another backend) is checked when the daemon opens it.
    """
    if "://" in cfg.db:
        return
    path = Path(os.path.abspath(cfg.db))
    parent = path.parent
    where = f"setting 'db': {cfg.db}"
    if path.is_dir():
        raise ConfigError(f"{where} is a directory, not a database file")
    if not parent.exists():
        below = next((p for p in parent.parents if p.exists()), None)
        if below is not None and not below.is_dir():
            raise ConfigError(f"{where}: {below} is not a directory")
        raise ConfigError(f"{where}: directory {parent} does not exist (create it first)")
    if not parent.is_dir():
        raise ConfigError(f"{where}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{where}: directory {parent} is not writable by this user (SQLite keeps its "
            "-wal and -shm files there)"
        )
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise ConfigError(f"{where}: the file is not readable and writable by this user")


def config_problems(cfg: Config) -> tuple[list[str], tuple[KindSpec, ...]]:
    """Every problem that would stop the daemon at start (one line each), and the kinds.

    Beyond parsing: the database path, the TLS files, the HTTP read token, the kinds file."""
    problems: list[str] = []
    for check in (check_db, tls_context, _check_http_token):
        try:
            check(cfg)
        except ConfigError as exc:
            problems.append(str(exc))
    kinds: tuple[KindSpec, ...] = ()
    try:
        kinds = load_kinds(cfg)
        load_inputs(cfg.inputs, tuple(ReadingValidator(kinds).kinds))
    except ConfigError as exc:
        problems.append(str(exc))
    return problems, kinds


def _check_http_token(cfg: Config) -> None:
    if cfg.http_addr is not None:
        http_api.require_token(cfg.http_addr[0], cfg.http_token)


def check_config(cfg: Config) -> tuple[KindSpec, ...]:
    """Everything `--check-config` checks beyond parsing (`config_problems`); returns the
    kinds. Raises ConfigError with the first problem."""
    problems, kinds = config_problems(cfg)
    if problems:
        raise ConfigError(problems[0])
    return kinds


async def serve(
    cfg: Config,
    *,
    routes: Sequence[RouteRegistrar] = (),
    maintenance: Maintenance | None = None,
    stop: asyncio.Event | None = None,
    reload: Callable[[], Config] | None = None,
) -> int:
    """Run the daemon until `stop` is set or a signal arrives; returns the exit code.

    SIGHUP reloads (`collector.reload`): `reload()` gives the config as it reads now (the
    command reads its file, environment and flags again); without it the same settings are
    checked again and their files (kinds, TLS) re-read.
    """
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    reload_requested = asyncio.Event()
    for sig, handler in (
        (signal.SIGTERM, stop.set),
        (signal.SIGINT, stop.set),
        # Installed first thing: SIGHUP's default action would end the process.
        (signal.SIGHUP, reload_requested.set),
    ):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, handler)
    lim = cfg.limits
    shared = cfg.ingest_workers > 1
    # The backend's own maintenance (a process of its own for SQLite) unless a hook
    # replaces it; the writer's session takes turns with it.
    path = await build_ingest(
        cfg,
        maintenance=(
            StartMaintenance(shared) if maintenance is None else HookMaintenance(maintenance)
        ),
        reuse_port=shared,
        writer_error_as_config=False,
        ready_log=log,
    )
    ingest, ssl_ctx, storage, metrics = path.ingest, path.ssl_context, path.storage, path.metrics
    writer, server, watchdog = path.writer, path.server, path.watchdog
    # The other ingest processes (`ingest_workers` > 1), started once this one listens.
    workers: IngestWorkers | None = None

    def forward_sighup() -> None:
        if workers is not None:
            workers.signal(signal.SIGHUP)

    reloading_task = asyncio.create_task(
        reloads(reload_requested, path.reloader, reload or (lambda: cfg), forward_sighup),
        name="reloads",
    )
    runner: web.AppRunner | None = None
    exit_code = 0
    gc_thresholds = gc.get_threshold()
    inputs: Inputs | None = None
    workers_stopped: asyncio.Task[None] | None = None
    try:
        inputs = Inputs.build(cfg, writer, ingest, ssl_ctx)
        server_task, (ingest_host, ingest_port) = await listen(
            server, cfg.listen_addr[0], cfg.listen_addr[1], cfg.listen
        )
        if shared:
            workers = IngestWorkers(cfg, ingest_port, storage.background_link(), reload)
            await workers.start()
        http_desc = "off"
        if cfg.http_addr is not None:
            state = AppState(
                db_path=Path(cfg.db),
                storage=storage,
                metrics=metrics,
                connected=(
                    (lambda: server.connected)
                    if workers is None
                    else _all_connected(workers, server)
                ),
                ready=lambda: writer.running and not stop.is_set(),
                read_token=cfg.http_token,
                more_metrics=_more_metrics(inputs, workers, metrics),
                totals=None if workers is None else functools.partial(workers.totals, metrics),
            )
            # Open HTTP requests (e.g. event streams) get a second to finish at shutdown.
            runner = web.AppRunner(
                create_app(state, [*routes, inputs.register]),
                access_log=None,
                shutdown_timeout=HTTP_SHUTDOWN_S,
            )
            await runner.setup()
            site = web.TCPSite(runner, *cfg.http_addr)
            try:
                await site.start()
            except OSError as exc:
                raise ConfigError(f"setting 'http': cannot listen on {cfg.http}: {exc}") from None
            h = runner.addresses[0]
            http_desc = f"{h[0]}:{h[1]}"
        forward_desc = await inputs.start(cfg.forward_addr)
        # Start-up objects (modules, validators, kind tables) never die: keep the cyclic GC
        # from rescanning them, which shortens its pauses (ACK latency tail).
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)  # put back at exit: tests run serve() in-process
        log.info(
            "listening ingest=%s:%d http=%s forward=%s tls=%s",
            ingest_host,
            ingest_port,
            http_desc,
            forward_desc,
            cfg.tls_mode,
        )
        sd_notify("READY=1\nSTATUS=listening")
        assert writer.crashed is not None
        crashed = asyncio.create_task(writer.crashed.wait())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({crashed, stopping, server_task}, return_when=asyncio.FIRST_COMPLETED)
        crashed.cancel()
        stopping.cancel()
        if writer.crashed.is_set():
            log.error("writer failed; shutting down")
            exit_code = 1
        log.info("shutting down")
        sd_notify("STOPPING=1")
        if workers is not None:  # each stops in parallel with this process
            workers_stopped = asyncio.create_task(workers.stop(lim.shutdown_timeout_s))
        await server.shutdown()
        await inputs.stop(lim.shutdown_timeout_s)
        await finish_sessions(server_task, lim.shutdown_timeout_s)
    finally:
        gc.set_threshold(*gc_thresholds)
        reloading_task.cancel()
        if inputs is not None:
            await inputs.stop(0.1)
        if watchdog is not None:
            watchdog.cancel()
        if workers is not None:
            if workers_stopped is None:
                workers_stopped = asyncio.create_task(workers.stop(0.0))
            await workers_stopped  # before the maintainer stops (storage.close)
        await writer.close()
        await asyncio.to_thread(storage.close)
        if runner is not None:
            await runner.cleanup()
    log.info("stopped")
    return exit_code


async def listen(
    server: Server, host: str, port: int, setting: str
) -> tuple[asyncio.Task[None], tuple[str, int]]:
    """Start `server` on host:port; its task and the address it bound. A bind error is
    the `listen` setting's ConfigError (`setting`: the address as configured)."""
    loop = asyncio.get_running_loop()
    bound: asyncio.Future[tuple[str, int]] = loop.create_future()
    server_task = asyncio.create_task(
        server.run(host, port, bound.set_result), name="ingest-server"
    )
    waiting: list[asyncio.Future[Any]] = [bound, server_task]
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if not bound.done():
        try:
            await server_task  # raises the bind error
        except OSError as exc:
            raise ConfigError(f"setting 'listen': cannot listen on {setting}: {exc}") from None
    return server_task, bound.result()


async def finish_sessions(server_task: asyncio.Task[None], timeout_s: float) -> None:
    """After `server.shutdown()`: let open sessions finish for `timeout_s`, then close them."""
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.shield(server_task)
    except TimeoutError:
        log.warning("sessions did not finish in %.1fs; closing them", timeout_s)
        server_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server_task


async def reloads(
    requested: asyncio.Event,
    reloader: reloading.Reloader,
    read: Callable[[], Config],
    forward: Callable[[], None] = lambda: None,
) -> None:
    """Apply a reload for each SIGHUP (and pass it on: `forward`); a bad config is one
    ERROR line, never an exit."""
    while True:
        await requested.wait()
        requested.clear()
        forward()
        try:
            loaded = await asyncio.to_thread(reloading.load, read)
        except (ConfigError, OSError, ValueError) as exc:
            reloading.log.error("reload failed, keeping the running config: %s", exc)
            continue
        reloader.apply(loaded)


def _all_connected(workers: IngestWorkers, server: Server) -> Callable[[], dict[str, int]]:
    return lambda: workers.connected(server.connected)


def _more_metrics(inputs: Inputs, workers: IngestWorkers | None, own: Metrics) -> Callable[[], str]:
    """The /metrics text after the counters: the foreign inputs', each worker's share."""
    if workers is None:
        return inputs.render_metrics
    return lambda: inputs.render_metrics() + workers.render_metrics(own)


def run(
    cfg: Config,
    *,
    routes: Sequence[RouteRegistrar] = (),
    reload: Callable[[], Config] | None = None,
) -> int:
    """Run the daemon in a fresh event loop (uvloop when installed); returns the exit code.

    `reload` reads the settings again on SIGHUP (see `serve`)."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(serve(cfg, routes=routes, reload=reload))
