"""The single writer: one thread owns the storage's write session and group-commits batches.

Connection handlers (on the event loop) call `Writer.submit`, which waits for queue credits
(backpressure: a handler that cannot get credits stops reading its socket) and returns a
future. The writer thread takes everything queued (up to `txn_max_rows` rows) and stores it in
ONE atomic `store` call of its `collector.storage.interface.WriteSession` (session fencing,
series, dedup, dead letters, the stream's `last_seq`). Only after it returns (the group is
durable) are the futures resolved, on the loop, via `call_soon_threadsafe`: an ACK always
follows the commit that holds its readings.

A storage error (`StorageError`: disk full, I/O error, lock timeout) stores nothing of the
group and answers every batch of it with RETRY; the next group tries again, so ingest
resumes by itself once the fault clears. HELLO authentication runs here too, so it sees the
committed `last_seq`; it also opens the session of (device, stream), whose new epoch fences
older sessions of that stream.

The backend's own maintenance runs beside the writer (SQLite: a process of its own that the
write session takes turns with); a session that `maintains` (a hook, in tests) is given
bounded steps in this thread between group commits (collector.ingest.pacing decides when).

This module owns the writer thread and its queue; it does no socket I/O, no validation and
no SQL: it talks to the storage interface only.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from collector.ingest.pacing import MaintenanceClock
from collector.ingest.prepare import PreparedBatch
from collector.storage.interface import (
    AuthResult,
    MaintenanceHook,
    Session,
    Storage,
    StorageError,
    WriteSession,
)
from schemas.wire import Reject

log = logging.getLogger(__name__)

Maintenance = MaintenanceHook
"""Called as (the backend's write connection, now_ns) in the writer thread, between group
commits and outside any ingest transaction, to do one bounded step of work (keep it under
~0.3 s: a batch that arrives meanwhile waits for it). It returns True when more work is
waiting: the writer then calls it again at once while the queue is idle, and after group
commits within pacing.MAINTENANCE_SHARE of its time under load; otherwise it calls again
after the interval. It runs its own transaction(s) (a transaction it leaves open is
committed, a storage error rolls it back). It must not delete or renumber series rows."""

# Default bound on rows waiting for the writer: ~0.3 s of ingest at the measured rate, so
# a saturated collector answers within ~0.5 s and holds ~25 MB of decoded readings at most.
QUEUE_ROWS: Final = 50_000
# Rows per group commit: beyond ~10k rows a bigger transaction gains <10% (PERFORMANCE.md)
# while ACK latency keeps growing.
TXN_MAX_ROWS: Final = 20_000
# What a RETRY asks the agent to wait when storage failed.
RETRY_AFTER_MS: Final = 1_000
# With no maintenance work waiting, the hook is asked again this often (idle or not).
MAINTENANCE_INTERVAL_MS: Final = 1_000
STORAGE_UNAVAILABLE: Final = "storage_unavailable"


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """The answer to one submitted batch: an ACK's counts, or a RETRY when retry_after_ms."""

    seq: int
    accepted: int
    duplicate: int
    rejects: tuple[Reject, ...]
    retry_after_ms: int | None = None
    resend: bool = False
    commit_s: float = 0.0
    # Not stored: a newer session of the same (device, stream) holds the stream now.
    fenced: bool = False


@dataclass(frozen=True, slots=True)
class HelloOutcome:
    auth: AuthResult
    last_seq: int = 0
    storage_error: bool = False
    # The session's epoch for (device, stream); batches are submitted under it.
    epoch: int = 0


@dataclass(slots=True)
class _BatchItem:
    session: Session
    batch: PreparedBatch
    future: asyncio.Future[BatchOutcome]
    weight: int


@dataclass(slots=True)
class _HelloItem:
    name: str
    token: str
    dropped: int
    stream: str
    future: asyncio.Future[HelloOutcome]


_STOP: Final = object()
_Item = _BatchItem | _HelloItem


class Writer:
    """Owns the write connection; see the module docstring for the contract."""

    def __init__(
        self,
        storage: Storage,
        *,
        synchronous: str = "FULL",
        queue_rows: int = QUEUE_ROWS,
        txn_max_rows: int = TXN_MAX_ROWS,
        allow_unknown_devices: bool = False,
        maintenance: Maintenance | None = None,
        maintenance_interval_ms: int = MAINTENANCE_INTERVAL_MS,
        retry_after_ms: int = RETRY_AFTER_MS,
        on_commit: Callable[[float], None] | None = None,
        on_stored: Callable[[Sequence[int]], None] | None = None,
    ) -> None:
        # The caller opened it and closes it after `close` (collector.storage.factory).
        self.storage = storage
        self.synchronous = synchronous
        self.txn_max_rows = txn_max_rows
        self.allow_unknown_devices = allow_unknown_devices
        self.maintenance = maintenance
        self.maintenance_interval_s = maintenance_interval_ms / 1000
        self.retry_after_ms = retry_after_ms
        self.on_commit = on_commit
        # Called in the writer thread with each stored batch's timestamps, before the
        # maintenance hook can run again.
        self.on_stored = on_stored
        self.credits = _Credits(queue_rows)
        # Unbounded as a container, bounded in effect: every batch item holds credits and
        # every HELLO item belongs to one of at most max_connections handlers.
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._queued = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self.crashed: asyncio.Event | None = None
        # Writer-thread state.
        self._failing = False

    # ---------------------------------------------------------------- loop side

    async def start(self) -> None:
        """Open the write session in the writer thread. Raises StorageError on failure."""
        self._loop = asyncio.get_running_loop()
        self.crashed = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="telemetry-writer", daemon=True)
        self._thread.start()
        await asyncio.to_thread(self._ready.wait)
        if self._start_error is not None:
            raise self._start_error

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def queue_depth(self) -> int:
        return self._queued

    async def hello(
        self, name: str, token: str, dropped: int = 0, stream: str = ""
    ) -> HelloOutcome:
        """Authenticate a HELLO in the writer thread (it may register the device) and open
        the session of (device, stream): its last seq and the epoch that fences older ones."""
        fut: asyncio.Future[HelloOutcome] = self._get_loop().create_future()
        self._put(_HelloItem(name, token, dropped, stream, fut))
        return await fut

    async def submit(
        self, device_id: int, batch: PreparedBatch, *, stream: str = "", epoch: int = 0
    ) -> asyncio.Future[BatchOutcome]:
        """Queue a batch once credits allow (this await is the backpressure point).

        Returns the future of its outcome, resolved after the commit that holds it. `epoch`
        is the session's (HelloOutcome.epoch): if a newer session of the stream exists by
        the commit, the batch is not stored and its outcome says `fenced`. Epoch 0: no
        session check.
        """
        weight = await self.credits.acquire(max(1, batch.row_count + len(batch.dead_letters)))
        fut: asyncio.Future[BatchOutcome] = self._get_loop().create_future()
        fut.add_done_callback(lambda _f: self.credits.release(weight))
        self._put(_BatchItem(Session(device_id, stream, epoch), batch, fut, weight))
        return fut

    async def close(self) -> None:
        """Commit everything queued, then close the write session and join the thread."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    def _put(self, item: _Item) -> None:
        if not self.running:
            raise RuntimeError("the writer is not running")
        self._queued += 1
        self._queue.put(item)

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "Writer.start() was not called"
        return self._loop

    def _resolve(self, fut: asyncio.Future[Any], value: object) -> None:
        self._queued -= 1
        if not fut.done():
            fut.set_result(value)

    def _fail(self, fut: asyncio.Future[Any], exc: BaseException) -> None:
        self._queued -= 1
        if not fut.done():
            fut.set_exception(exc)

    # ---------------------------------------------------------------- writer thread

    def _run(self) -> None:
        try:
            conn = self.storage.writer_session(
                synchronous=self.synchronous, maintenance=self.maintenance
            )
        except (StorageError, ValueError) as exc:
            self._start_error = exc
            self._ready.set()
            return
        self._ready.set()
        log.info("writer started synchronous=%s", self.synchronous)
        try:
            self._loop_forever(conn)
        except BaseException as exc:
            log.exception("writer crashed")
            self._drain_with_error(exc)
            loop = self._get_loop()
            if self.crashed is not None:
                try:
                    loop.call_soon_threadsafe(self.crashed.set)
                except RuntimeError:  # the loop is already closed
                    pass
            raise
        finally:
            conn.close()
        log.info("writer stopped")

    def _loop_forever(self, conn: WriteSession) -> None:
        sched = MaintenanceClock(self.maintenance_interval_s)
        while True:
            try:
                if not conn.maintains:
                    first = self._queue.get()
                elif wait := sched.idle_wait_s():
                    first = self._queue.get(timeout=wait)
                else:
                    first = self._queue.get_nowait()
            except queue.Empty:
                self._maintain(conn, sched, loaded=False)
                continue
            stop = first is _STOP
            group: list[_Item] = [] if stop else [first]  # type: ignore[list-item]  # not _STOP
            rows = 0 if stop else _weight(first)
            while not stop and rows < self.txn_max_rows:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                group.append(item)  # type: ignore[arg-type]  # not _STOP
                rows += _weight(item)
            self._process(conn, group)
            if stop:
                return
            while conn.maintains and sched.due_under_load():
                self._maintain(conn, sched, loaded=True)
                if not self._queue.empty() and not sched.in_debt(time.monotonic()):
                    break  # commit what arrived meanwhile first

    def _process(self, conn: WriteSession, group: list[_Item]) -> None:
        # In queue order: a HELLO sees the commit of every batch queued before it, so its
        # WELCOME.last_seq counts them.
        batches: list[_BatchItem] = []
        for item in group:
            if isinstance(item, _HelloItem):
                self._commit_and_deliver(conn, batches)
                batches = []
                self._deliver(item.future, self._hello(conn, item))
            else:
                batches.append(item)
        self._commit_and_deliver(conn, batches)

    def _commit_and_deliver(self, conn: WriteSession, batches: list[_BatchItem]) -> None:
        if batches:
            for item, outcome in zip(batches, self._commit(conn, batches), strict=True):
                self._deliver(item.future, outcome)

    def _deliver(
        self, fut: asyncio.Future[BatchOutcome] | asyncio.Future[HelloOutcome], value: object
    ) -> None:
        try:
            self._get_loop().call_soon_threadsafe(self._resolve, fut, value)
        except RuntimeError:  # loop closed: nobody is waiting any more
            pass

    def _drain_with_error(self, exc: BaseException) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _BatchItem | _HelloItem):
                try:
                    self._get_loop().call_soon_threadsafe(self._fail, item.future, exc)
                except RuntimeError:
                    return

    def _hello(self, conn: WriteSession, item: _HelloItem) -> HelloOutcome:
        try:
            auth = conn.authenticate(
                item.name,
                item.token,
                time.time_ns(),
                allow_unknown=self.allow_unknown_devices,
            )
            if auth.device is None:
                return HelloOutcome(auth)
            last_seq, epoch = conn.open_session(
                auth.device.id, item.stream, time.time_ns(), spool_dropped=item.dropped
            )
            return HelloOutcome(auth, last_seq, epoch=epoch)
        except StorageError as exc:
            log.warning("device lookup failed device=%s error=%s", item.name, exc)
            return HelloOutcome(AuthResult(None, f"storage error: {exc}"), 0, True)

    def _commit(self, conn: WriteSession, items: list[_BatchItem]) -> list[BatchOutcome]:
        t0 = time.perf_counter()
        try:
            outcomes, stored = conn.store([(it.session, it.batch) for it in items])
        except StorageError as exc:
            if not self._failing:
                log.error("commit failed, answering RETRY until storage recovers error=%s", exc)
            self._failing = True
            return [
                BatchOutcome(it.batch.seq, 0, 0, (), retry_after_ms=self.retry_after_ms)
                for it in items
            ]
        if self._failing:
            log.warning("storage recovered, commits succeed again")
            self._failing = False
        if self.on_stored is not None:
            for b in stored:
                if b.ts:
                    self.on_stored(b.ts)
        elapsed = time.perf_counter() - t0
        if self.on_commit is not None:
            self.on_commit(elapsed)
        return [
            BatchOutcome(
                it.batch.seq,
                o.accepted,
                o.duplicate,
                () if o.fenced else it.batch.rejects,
                None,
                o.resend,
                elapsed,
                o.fenced,
            )
            for it, o in zip(items, outcomes, strict=True)
        ]

    def _maintain(self, conn: WriteSession, sched: MaintenanceClock, *, loaded: bool) -> None:
        if not conn.maintains:
            return
        t0 = time.monotonic()
        more = False
        try:
            more = conn.maintain(time.time_ns())
        except StorageError as exc:
            log.warning("maintenance failed error=%s", exc)
        sched.ran(t0, time.monotonic(), more=more, loaded=loaded)


def _weight(item: object) -> int:
    return item.weight if isinstance(item, _BatchItem) else 1


class _Credits:
    """A FIFO, weighted semaphore on the event loop: bounds rows waiting for the writer."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self.available = self.capacity
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    async def acquire(self, n: int) -> int:
        n = min(n, self.capacity)
        if not self._waiters and self.available >= n:
            self.available -= n
            return n
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((n, fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(n)  # granted just as we were cancelled: give it back
            raise
        return n

    def release(self, n: int) -> None:
        self.available += n
        while self._waiters:
            need, fut = self._waiters[0]
            if fut.cancelled():
                self._waiters.popleft()
                continue
            if need > self.available:
                break
            self._waiters.popleft()
            self.available -= need
            fut.set_result(None)
