"""More than one ingest process (`ingest_workers` > 1, Linux): the daemon's extra workers.

The daemon process runs everything it runs with one worker (HTTP, the foreign inputs, the
maintenance process, its own ingest listener) and starts `ingest_workers - 1` more
processes. Each is a whole ingest path of its own (accept, TLS, decode, validate, its own
writer thread and group commits) on its own core, listening on the same port with
SO_REUSEPORT: the kernel spreads new connections over the listeners by a hash of the
address pair. The writers share the one SQLite file as two collectors do (session fencing
and the stream rows are read in every write transaction; series ids are looked up under the
write lock on a cache miss), and take turns at its write lock through `flock(2)` on lock
files beside it (`collector.storage.sqlite.maintainer.FileTurns`), so a writer waiting for
another wakes the moment that one commits instead of sleeping in SQLite's busy handler.

What is per process and what is shared:
* limits (`max_connections`, `max_connections_per_ip`, the per-device rate limit) hold per
  process: N workers accept up to N x `max_connections`; a device's rate bucket lives in
  the process that holds its connection;
* /metrics (served by the daemon process) reports the sum over all processes; each worker
  sends its counters every `METRICS_PUSH_S`, so theirs lag by at most that. A
  `telemetry_ingest_worker_*` family shows each process's share;
* SIGHUP and SIGTERM reach every worker (the daemon forwards them; under systemd the whole
  control group gets SIGTERM anyway); Ctrl-C's SIGINT is left to the daemon, which stops
  the workers with SIGTERM;
* a worker that dies is started again (after `RESTART_PAUSE_S`): its agents reconnect to the
  other listeners meanwhile and resend what was not acknowledged; its open transaction rolls
  back and the kernel drops its file locks. A worker that cannot start at all (bind error)
  stops the daemon at start-up. The workers die with the daemon (PR_SET_PDEATHSIG).

This module starts, watches and stops the worker processes and runs a worker's ingest; it
owns no protocol, SQL or HTTP handler code.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import gc
import logging
import logging.handlers
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from collector.config import Config
from collector.errors import ConfigError
from collector.web.metrics import Metrics

if TYPE_CHECKING:
    from collector.ingest.server import Server

log = logging.getLogger(__name__)

# How often a worker sends its counters to the daemon process (/metrics lags this much).
METRICS_PUSH_S: Final = 0.5
# How often the daemon looks for workers that died, and the pause before one is started
# again (a worker that dies at once does not spin).
WATCH_S: Final = 0.5
RESTART_PAUSE_S: Final = 1.0
# A worker has this long to open the database and listen.
START_TIMEOUT_S: Final = 30.0
# Beyond the graceful shutdown budget, this long before a worker is killed.
KILL_GRACE_S: Final = 2.0
_PR_SET_PDEATHSIG: Final = 1


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a worker process is started with (pickled into it)."""

    index: int
    cfg: Config
    # The port the daemon process bound (`listen` may say 0).
    port: int
    # Storage.background_link(): its writer takes turns with the others and the maintainer.
    link: object | None
    # Reads the config again on SIGHUP; None: the same settings, their files read again.
    reload: Callable[[], Config] | None
    log_level: int
    parent: int


@dataclass(slots=True)
class _Slot:
    index: int
    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection
    metrics: Metrics = dataclasses.field(default_factory=Metrics)
    connected: dict[str, int] = dataclasses.field(default_factory=dict)
    ready: asyncio.Future[int] | None = None
    started: float = 0.0


class IngestWorkers:
    """The daemon's handle on its extra ingest processes (see the module docstring)."""

    def __init__(
        self,
        cfg: Config,
        port: int,
        link: object | None,
        reload: Callable[[], Config] | None,
    ) -> None:
        self.cfg = cfg
        self.count = cfg.ingest_workers - 1
        self._ctx = multiprocessing.get_context("spawn")
        self._port = port
        self._link = link
        # A reload function that does not pickle (a test's lambda): workers re-read the files
        # their running settings name instead.
        try:
            pickle.dumps(reload)
            self._reload = reload
        except (pickle.PicklingError, AttributeError, TypeError):
            self._reload = None
        self._slots: list[_Slot] = []
        # Counters of worker processes that died, so the totals never go backwards.
        self._departed = Metrics()
        self.restarts = 0
        self._stopping = False
        self._watch: asyncio.Task[None] | None = None

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start every worker and wait until each listens. Raises ConfigError when one
        cannot start (its own log line says why)."""
        self._slots = [self._spawn(i) for i in range(1, self.count + 1)]
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                for slot in self._slots:
                    assert slot.ready is not None
                    await slot.ready
        except (TimeoutError, EOFError, OSError) as exc:
            await self.stop(0.0)
            raise ConfigError(
                f"setting 'ingest_workers': an ingest worker did not start ({exc or 'timeout'})"
            ) from None
        self._watch = asyncio.create_task(self._watch_loop(), name="ingest-workers-watch")
        log.info(
            "ingest workers started count=%d pids=%s",
            self.count + 1,
            ",".join([str(os.getpid()), *(str(s.process.pid) for s in self._slots)]),
        )

    def _spawn(self, index: int) -> _Slot:
        recv, send = self._ctx.Pipe(duplex=False)
        spec = WorkerSpec(
            index,
            self.cfg,
            self._port,
            self._link,
            self._reload,
            logging.getLogger().getEffectiveLevel(),
            os.getpid(),
        )
        process = self._ctx.Process(
            target=worker_main, args=(spec, send), name=f"telemetry-ingest-{index}", daemon=True
        )
        process.start()
        send.close()  # the child holds its end: EOF here when it exits
        loop = asyncio.get_running_loop()
        slot = _Slot(index, process, recv, ready=loop.create_future(), started=time.monotonic())
        loop.add_reader(recv.fileno(), self._receive, slot)
        return slot

    def _receive(self, slot: _Slot) -> None:
        try:
            while slot.conn.poll():
                kind, *body = slot.conn.recv()
                if kind == "ready" and slot.ready is not None and not slot.ready.done():
                    slot.ready.set_result(int(body[0]))
                elif kind == "metrics":
                    slot.metrics, slot.connected = body
                elif kind == "log":
                    _handle(body[0])
        except (EOFError, OSError, pickle.UnpicklingError) as exc:  # died mid-message
            asyncio.get_running_loop().remove_reader(slot.conn.fileno())
            if slot.ready is not None and not slot.ready.done():
                slot.ready.set_exception(EOFError(f"exit code {slot.process.exitcode}"))
            del exc

    async def _watch_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(WATCH_S)
            for pos, slot in enumerate(self._slots):
                if slot.process.is_alive() or self._stopping:
                    continue
                if time.monotonic() - slot.started < RESTART_PAUSE_S:
                    continue
                log.error(
                    "ingest worker exited index=%d pid=%s code=%s; starting it again",
                    slot.index,
                    slot.process.pid,
                    slot.process.exitcode,
                )
                self._retire(slot)
                self.restarts += 1
                self._slots[pos] = self._spawn(slot.index)

    def _retire(self, slot: _Slot) -> None:
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(slot.conn.fileno())
        # Counters carry over; gauges of a dead process are zero.
        slot.metrics.connections_open = 0
        for d in slot.metrics.devices.values():
            d.connected = 0
        slot.metrics.queue_depth = lambda: 0
        self._departed.add(slot.metrics)
        slot.conn.close()

    def signal(self, sig: signal.Signals) -> None:
        """Pass a signal on to every worker (SIGHUP: reload)."""
        for slot in self._slots:
            if slot.process.is_alive() and slot.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.process.pid, sig)

    async def stop(self, timeout_s: float) -> None:
        """SIGTERM every worker (each shuts down gracefully within its own budget), wait up
        to `timeout_s` plus KILL_GRACE_S, then kill what is left."""
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
        self.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s + KILL_GRACE_S
        for slot in self._slots:
            left = max(0.0, deadline - time.monotonic())
            await asyncio.to_thread(slot.process.join, left)
            if slot.process.is_alive():
                log.warning("ingest worker did not stop index=%d; killing it", slot.index)
                slot.process.kill()
                await asyncio.to_thread(slot.process.join)
        for slot in self._slots:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(slot.conn.fileno())
            slot.conn.close()

    # ---------------------------------------------------------------- what /metrics sees

    def totals(self, own: Metrics) -> Metrics:
        """The daemon process's counters plus every worker's (last report)."""
        out = Metrics(maintainer_restarts=own.maintainer_restarts)
        out.add(own)
        out.add(self._departed)
        for slot in self._slots:
            out.add(slot.metrics)
        return out

    def connected(self, own: dict[str, int]) -> dict[str, int]:
        """Open connections per device over all processes."""
        out = dict(own)
        for slot in self._slots:
            for device, n in slot.connected.items():
                out[device] = out.get(device, 0) + n
        return out

    def render_metrics(self, own: Metrics) -> str:
        """Each process's share, in Prometheus text (worker 0 is the daemon process)."""
        rows = [(0, os.getpid(), own)] + [
            (s.index, s.process.pid or 0, s.metrics) for s in self._slots
        ]
        out = [
            "# HELP telemetry_ingest_worker_connections_open Open agent connections per "
            "ingest process.",
            "# TYPE telemetry_ingest_worker_connections_open gauge",
        ]
        out += [
            f'telemetry_ingest_worker_connections_open{{worker="{i}",pid="{pid}"}} '
            f"{m.connections_open}"
            for i, pid, m in rows
        ]
        out += [
            "# HELP telemetry_ingest_worker_readings_accepted_total Readings accepted per "
            "ingest process (since that process started).",
            "# TYPE telemetry_ingest_worker_readings_accepted_total counter",
        ]
        out += [
            f'telemetry_ingest_worker_readings_accepted_total{{worker="{i}",pid="{pid}"}} '
            f"{m.accepted}"
            for i, pid, m in rows
        ]
        out += [
            "# HELP telemetry_ingest_worker_restarts_total Times an ingest worker exited and "
            "was started again.",
            "# TYPE telemetry_ingest_worker_restarts_total counter",
            f"telemetry_ingest_worker_restarts_total {self.restarts}",
        ]
        return "\n".join(out) + "\n"


# -------------------------------------------------------------------- in the worker process


def _handle(record: logging.LogRecord) -> None:
    """A worker's log record, to the daemon's handlers (as logging.handlers.QueueListener)."""
    for handler in logging.getLogger().handlers:
        if record.levelno >= handler.level:
            handler.handle(record)


class _Channel:
    """The worker's end of its pipe to the daemon: one message at a time from any thread.

    A pipe per worker, not a Queue shared by all: a Queue's writers share a cross-process
    lock, and a worker SIGKILLed while holding it would silence the others for good."""

    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()

    def send(self, *message: object) -> None:
        with self.lock:
            self.conn.send(message)

    def put_nowait(self, record: logging.LogRecord) -> None:
        """logging.handlers.QueueHandler's queue: a prepared (picklable) record."""
        try:
            self.send("log", record)
        except (OSError, ValueError):  # the daemon is gone: nobody to tell
            pass


def worker_main(spec: WorkerSpec, conn: multiprocessing.connection.Connection) -> None:
    """A worker process: run one ingest path until SIGTERM or the daemon goes away."""
    with contextlib.suppress(OSError, AttributeError):
        # The kernel stops this worker (gracefully) when the daemon dies, even by SIGKILL.
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    # Ctrl-C reaches the whole process group: the daemon decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = _Channel(conn)
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(channel)]  # type: ignore[arg-type]  # put_nowait is all it uses
    root.setLevel(spec.log_level)
    for handler in root.handlers:
        handler.addFilter(_WorkerName(spec.index))
    factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            code = runner.run(_serve(spec, channel))
    except ConfigError as exc:
        log.error("ingest worker cannot start: %s", exc)
        code = 2
    logging.shutdown()
    conn.close()
    sys.exit(code)


class _WorkerName(logging.Filter):
    """Marks a worker's log records: `collector.ingest.server[2]: connected ...`."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.suffix = f"[{index}]"

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.endswith(self.suffix):
            record.name += self.suffix
        return True


async def _serve(spec: WorkerSpec, conn: _Channel) -> int:
    # Imported here: collector.daemon imports this module.
    from collector import daemon
    from collector.ingestpath import JoinMaintenance, build_ingest

    cfg = spec.cfg
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reload_requested = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_requested.set)
    path = await build_ingest(
        cfg,
        maintenance=JoinMaintenance(spec.link),
        reuse_port=True,
        writer_error_as_config=True,
        ready_log=None,
    )
    storage, metrics, writer, server = path.storage, path.metrics, path.writer, path.server
    lim = cfg.limits
    reloads = asyncio.create_task(
        daemon.reloads(reload_requested, path.reloader, spec.reload or (lambda: cfg)),
        name="reloads",
    )
    exit_code = 0
    try:
        server_task, _ = await daemon.listen(server, cfg.listen_addr[0], spec.port, cfg.listen)
        conn.send("ready", os.getpid())
        gc.freeze()
        gc.set_threshold(*daemon.GC_THRESHOLDS)
        log.info("ingest worker listening index=%d pid=%d", spec.index, os.getpid())
        assert writer.crashed is not None
        waits = {
            asyncio.create_task(writer.crashed.wait()),
            asyncio.create_task(stop.wait()),
            asyncio.create_task(_push_metrics(conn, metrics, server, spec.parent)),
            server_task,
        }
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in waits - {server_task}:
            task.cancel()
        if writer.crashed.is_set():
            log.error("writer failed; ingest worker exiting")
            exit_code = 1
        await server.shutdown()
        await daemon.finish_sessions(server_task, lim.shutdown_timeout_s)
    finally:
        reloads.cancel()
        await writer.close()
        await asyncio.to_thread(storage.close)
        with contextlib.suppress(OSError, ValueError):
            conn.send("metrics", metrics.snapshot(), server.connected)
    log.info("ingest worker stopped index=%d", spec.index)
    return exit_code


async def _push_metrics(conn: _Channel, metrics: Metrics, server: Server, parent: int) -> None:
    """Send the counters every METRICS_PUSH_S; return when the daemon is gone."""
    while os.getppid() == parent:
        try:
            conn.send("metrics", metrics.snapshot(), server.connected)
        except (OSError, ValueError):
            return
        await asyncio.sleep(METRICS_PUSH_S)
