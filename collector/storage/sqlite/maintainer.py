"""The storage engine's maintenance in a process of its own: compaction, retention, reclaim.

Why a process: compaction costs about half as much CPU per reading as ingest (decode,
validate, insert), and in the writer thread it shares one core (the GIL) with the whole
ingest path, so a collector that must also compact ingests at about half the rate of one
that need not (docs/benchmarks.md, "End-to-end ingest"). In a process of its own it runs on
another core and ingest keeps its rate.

The daemon side (`Maintainer`) starts the process, relays which windows receive readings
(the writer's `note` per stored batch, `flush` per commit: a few window start times over a
multiprocessing queue, never blocking the writer), forwards the process's log records to
the daemon's handlers, and stops it at shutdown. The process (`_main`) opens its own
connection and loops: one bounded step (`step`), again after a rest in proportion to
the step while work is waiting (`Pace`: a share of a core that grows while work keeps
waiting), otherwise after POLL_S or when the writer reports activity. It also checkpoints
the WAL, and lets the writer start it over (`checkpoint`).

Both processes write the same SQLite file; SQLite's write lock serialises them. The
compactor reads and encodes outside the lock and holds it only to write blocks and delete
head rows (collector.storage.sqlite.compactor); the writer reads the compaction horizon inside each
of its transactions, so a resent reading is never stored twice whichever process ran last.

The process dies with the daemon (PR_SET_PDEATHSIG on Linux, and a parent check each
loop); a step is one transaction, so being killed at any point loses nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import gc
import logging
import logging.handlers
import multiprocessing
import os
import pickle
import queue
import signal
import sqlite3
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from typing import Final, Protocol, cast

from collector.storage.sqlite import compactor, retention, store
from collector.storage.sqlite.activity import Activity, window_keys

log = logging.getLogger(__name__)

# With no work waiting, the process looks again this often (or at once when readings arrive).
POLL_S: Final = 1.0
# The writer reports a window that keeps receiving readings at most this often. Reported
# after every commit (500 a second at 10,000 readings/s in batches of 10), each report woke
# the process for a step that found nothing to do and cost the daemon a GIL handoff to the
# queue's feeder thread; the activity only needs to know that a window is still filling
# (activity.QUIET_S is 5 s).
REPORT_S: Final = 0.5
# How often this process copies the WAL into the database file (a PASSIVE checkpoint: it
# never waits for the writer or readers). Checkpoints otherwise run in whichever connection
# commits past the threshold, mostly the writer thread, the bottleneck of ingest: moving
# them here measured ~10% more readings/s (docs/benchmarks.md, "End-to-end ingest").
CHECKPOINT_S: Final = 0.5
# The WAL starts over once it holds this many frames (pages; 32 MiB) and a checkpoint left
# at most FINISH_FRAMES of them to copy (checkpoint); each start costs the writer a wait for
# that copy and its fsync (2 ms p50, up to 47 ms on a busy host). It must start over well
# within store.WAL_SIZE_LIMIT_BYTES, so that the file is reused, not cut back and grown
# again: at 14,000 frames it peaked at 15-19k (past the 64 MiB) and ingest commits took
# p50 0.39 ms and p99 5.8-8 ms against 0.23-0.26 and 2.1-4.6 ms at 8,192.
RESTART_FRAMES: Final = 8_192
FINISH_FRAMES: Final = 256
# The writer's own checkpoint threshold while this process runs (pages): only reached if
# the process stops checkpointing.
WRITER_WAL_AUTOCHECKPOINT: Final = 4 * store.WAL_AUTOCHECKPOINT_PAGES
# While work waits, the process uses at most this share of a core at first (Pace), growing
# to all of it once work has waited RAMP_S without a break; one rest is at most
# MAX_PAUSE_S. A live window (6-10 s of CPU at 10,000 readings/s) then takes ~25 s of the
# two minutes before the next one closes.
MIN_SHARE: Final = 0.3
RAMP_S: Final = 120.0
MAX_PAUSE_S: Final = 0.5
# After a storage error (lock timeout, disk full) the next step waits this long.
ERROR_PAUSE_S: Final = 1.0
# At shutdown the current step may finish for this long before the process is killed (a
# step is a transaction: killing it loses nothing, the work is redone at the next start).
STOP_TIMEOUT_S: Final = 5.0
# Either side waits at most this long for the other's write transaction before it tries
# the SQLite lock itself (a step holds it ~0.1-0.3 s; a process killed mid-step never
# releases the locks of Turns).
MAX_TURN_WAIT_S: Final = 1.0
# The cyclic GC's thresholds: a window's 100,000 head rows are as many tuples, each a
# container allocation; with Python's default (700) they set off collections all the time.
GC_THRESHOLDS: Final = (200_000, 10, 10)
_PR_SET_PDEATHSIG: Final = 1

_Stop = None


def step(
    conn: sqlite3.Connection, now_ns: int, activity: Activity, retention_ns: int | None
) -> bool:
    """One bounded step of maintenance; True while more work is waiting.

    Compaction first; retention (when `retention_ns` is set) once compaction has caught
    up: it is cheap when nothing expired (one indexed probe of the blocks and of the head).
    """
    if compactor.maintenance(conn, now_ns, activity):
        return True
    if retention_ns is not None:
        retention.apply_retention(conn, now_ns - retention_ns)
    return False


class Inbox(Protocol):
    """Where writers report which windows received readings (a multiprocessing Queue, or
    a `PipeInbox` when writers of several processes share it)."""

    def put_nowait(self, obj: tuple[int, ...] | None) -> None: ...

    def get(self, block: bool = True, timeout: float | None = None) -> tuple[int, ...] | None: ...

    def get_nowait(self) -> tuple[int, ...] | None: ...

    def close(self) -> None: ...


class PipeInbox:
    """A one-way pipe that writers in many processes share with no lock between them.

    A multiprocessing Queue serialises its writers with a cross-process lock: a writer
    SIGKILLed while holding it (an ingest worker killed mid-write) would wedge every other
    writer for good. Here each report is one write(2) of at most PIPE_BUF bytes, which the
    kernel makes atomic, on a non-blocking pipe: a report is written whole or not at all
    (dropped when the pipe is full, e.g. while the maintenance process is being restarted:
    its windows then settle by time alone, and the horizon check keeps resent readings
    out). The read end speaks multiprocessing.connection's framing. Picklable at spawn.
    """

    # Window start times per report: 4 + pickled ints stays below PIPE_BUF (4096).
    CHUNK: Final = 256

    def __init__(self, ctx: multiprocessing.context.SpawnContext) -> None:
        self._reader, self._writer = ctx.Pipe(duplex=False)
        self._nonblocking = False
        self.dropped = 0

    def __getstate__(self) -> tuple[object, object]:
        return (self._reader, self._writer)

    def __setstate__(self, state: tuple[object, object]) -> None:
        self._reader, self._writer = state  # type: ignore[assignment]  # ours
        self._nonblocking = False
        self.dropped = 0

    def put_nowait(self, obj: tuple[int, ...] | None) -> None:
        items = (
            [obj]
            if obj is None
            else [obj[i : i + self.CHUNK] for i in range(0, len(obj), self.CHUNK)]
        )
        fd = self._writer.fileno()
        if not self._nonblocking:
            os.set_blocking(fd, False)
            self._nonblocking = True
        for item in items:
            body = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
            try:
                os.write(fd, struct.pack("!i", len(body)) + body)
            except BlockingIOError:
                self.dropped += 1

    def get(self, block: bool = True, timeout: float | None = None) -> tuple[int, ...] | None:
        if not self._reader.poll(timeout if block else 0):
            raise queue.Empty
        item: tuple[int, ...] | None = self._reader.recv()
        return item

    def get_nowait(self) -> tuple[int, ...] | None:
        return self.get(block=False)

    def close(self) -> None:
        self._reader.close()
        self._writer.close()


class WriterTurns(Protocol):
    """Who writes next (Turns, FileTurns): what a writer and the maintenance process hold."""

    def writer(self) -> contextlib.AbstractContextManager[None]: ...

    def maintainer(self) -> contextlib.AbstractContextManager[None]: ...


@dataclass(slots=True)
class WriterLink:
    """What a writer needs of the maintenance process: its turns at the write lock and the
    inbox that hears which windows received readings. Picklable when the turns are
    `FileTurns`, so writers in other processes (`--ingest-workers`) share one maintainer."""

    inbox: Inbox
    turns: WriterTurns
    window_ns: int
    clock: Callable[[], float] = time.monotonic
    _keys: set[int] = field(default_factory=set)
    # The windows reported since _sent_at (each at most once per REPORT_S).
    _sent: set[int] = field(default_factory=set)
    _sent_at: float = -float("inf")

    def __getstate__(self) -> tuple[object, ...]:
        return (self.inbox, self.turns, self.window_ns)

    def __setstate__(self, state: tuple[object, ...]) -> None:
        self.inbox, self.turns, self.window_ns = state  # type: ignore[assignment]  # ours
        self.clock = time.monotonic
        self._keys = set()
        self._sent = set()
        self._sent_at = -float("inf")

    def writer_turn(self) -> contextlib.AbstractContextManager[None]:
        """Writer thread: wrap each write transaction (Turns.writer)."""
        return self.turns.writer()

    def note(self, timestamps: Sequence[int]) -> None:
        """Writer thread: readings with these timestamps are in the transaction."""
        if timestamps:
            self._keys.update(window_keys(timestamps, self.window_ns))

    def flush(self) -> None:
        """Writer thread, after a commit: tell the process which windows received readings,
        each window at most once per REPORT_S (a new one at once)."""
        if not self._keys:
            return
        now = self.clock()
        if now - self._sent_at >= REPORT_S:
            self._sent.clear()
            self._sent_at = now
        if not self._keys <= self._sent:
            self._inbox_put(tuple(self._keys))
            self._sent |= self._keys
        self._keys.clear()

    def _inbox_put(self, keys: tuple[int, ...]) -> None:
        with contextlib.suppress(ValueError, OSError):  # the queue closed at shutdown
            self.inbox.put_nowait(keys)  # a feeder thread writes the pipe


class Maintainer:
    """The daemon's handle on the maintenance process.

    `shared=True`: writers in several processes (`--ingest-workers`) take turns at the
    write lock with it and with each other through lock files beside the database
    (`FileTurns`); `link` is what each of them needs.
    """

    def __init__(
        self,
        db: str,
        *,
        retention_ns: int | None,
        shared: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        # Shared: written by ingest processes that may be SIGKILLed (PipeInbox says why).
        self._inbox: Inbox = PipeInbox(ctx) if shared else ctx.Queue()
        self._shared = shared
        self._turns: WriterTurns = FileTurns(db) if shared else Turns(ctx)
        self.link = WriterLink(self._inbox, self._turns, compactor.WINDOW_NS, clock)
        self._logs: Queue[logging.LogRecord] = ctx.Queue()
        self._ctx = ctx
        self._args = (db, retention_ns, self._inbox, self._logs)
        self._process = self._new_process()
        self.restarts = 0
        root = logging.getLogger()
        self._listener = logging.handlers.QueueListener(
            self._logs, *root.handlers, respect_handler_level=True
        )

    def _new_process(self) -> multiprocessing.process.BaseProcess:
        level = logging.getLogger().getEffectiveLevel()
        return self._ctx.Process(
            target=_main,
            args=(*self._args, self._turns, level, os.getpid()),
            name="telemetry-maintainer",
            daemon=True,
        )

    def start(self) -> None:
        self._listener.start()
        self._process.start()
        log.info("maintainer started pid=%s", self._process.pid)

    def restart_if_dead(self) -> bool:
        """Start a new process if the current one exited; True if it had to."""
        if self._process.is_alive():
            return False
        log.error("maintainer exited code=%s; starting it again", self._process.exitcode)
        self.restarts += 1
        if not self._shared:  # it may have died holding its turn (file locks die with it)
            self._turns = self.link.turns = Turns(self._ctx)
        self._process = self._new_process()
        self._process.start()
        return True

    def writer_turn(self) -> contextlib.AbstractContextManager[None]:
        """Writer thread: wrap each ingest transaction (Turns.writer)."""
        return self.link.writer_turn()

    def note(self, timestamps: Sequence[int]) -> None:
        """Writer thread: readings with these timestamps are in the transaction."""
        self.link.note(timestamps)

    def flush(self) -> None:
        """Writer thread, after a commit: tell the process which windows received readings
        (WriterLink.flush: each at most once per REPORT_S)."""
        self.link.flush()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Ask the process to finish its step and exit; kill it after `timeout_s`."""
        if self._process.pid is not None:
            with contextlib.suppress(ValueError, OSError):
                self._inbox.put_nowait(_Stop)
            self._process.join(timeout_s)
            if self._process.is_alive():
                log.warning("maintainer did not stop in %.1fs; killing it", timeout_s)
                self._process.kill()
                self._process.join()
        self._inbox.close()
        self._listener.stop()
        self._logs.close()


def _main(
    db: str,
    retention_ns: int | None,
    inbox: Inbox,
    logs: Queue[logging.LogRecord],
    turns: WriterTurns,
    level: int,
    parent: int,
) -> None:
    _die_with_parent()
    # Ctrl-C reaches the whole process group: the daemon decides when this process stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # So does a hangup; SIGHUP means "reload" to the daemon and this process has nothing to
    # reload, so it must not die of it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    stopping = False

    def on_term(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    gc.set_threshold(*GC_THRESHOLDS)
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(logs)]
    root.setLevel(level)
    try:
        # NORMAL: no fsync per commit. This process only moves readings that are already
        # durable: a commit lost to a power cut leaves them in the head, and the writer's
        # own FULL commits sync the one WAL file, so nothing after them can go missing.
        # Measured: the commit of a 96,000-row window takes 5-6 ms instead of 16-21 ms
        # (bench/bench_window_lock.py).
        conn = store.connect(db, synchronous="NORMAL", factory=_TakingTurns)
        cast(_TakingTurns, conn).turns = turns
    except sqlite3.Error as exc:
        log.error("maintainer cannot open the database db=%s error=%s", db, exc)
        return
    activity = Activity(compactor.WINDOW_NS, compactor.MERGE_NS)
    # This process checkpoints the WAL (below); the writer's own threshold is a safety net.
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    checkpointed = time.monotonic()
    pace = Pace()
    more = True
    try:
        while not stopping and os.getppid() == parent:
            if not _receive(inbox, activity, 0.0 if more else POLL_S):
                break
            try:
                t0 = time.monotonic()
                more = step(conn, time.time_ns(), activity, retention_ns)
                if conn.in_transaction:
                    conn.execute("COMMIT")
                t1 = time.monotonic()
                if time.monotonic() - checkpointed >= CHECKPOINT_S:
                    checkpoint(conn)
                    checkpointed = time.monotonic()
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                log.warning("maintenance failed error=%s", exc)
                more = False
                time.sleep(ERROR_PAUSE_S)
                continue
            # Spread the step's CPU out while little work waits (Pace): the ingest writer
            # and the event loop share the machine with this process.
            if not _pause(inbox, activity, pace.pause_s(t0, t1, more=more)):
                break
    finally:
        conn.close()


def checkpoint(
    conn: sqlite3.Connection,
    *,
    restart_frames: int = RESTART_FRAMES,
    finish_frames: int = FINISH_FRAMES,
) -> tuple[int, int, int]:
    """Copy the WAL into the database file (PASSIVE: it waits for nobody); once the WAL is
    longer than RESTART_FRAMES and all but FINISH_FRAMES of it are copied, copy the rest in
    the connection's write turn, so the writer's next commit starts the WAL over.

    Under constant commits a PASSIVE checkpoint never catches up (the writer appends while
    it copies), so without the second one the WAL grew past WAL_SIZE_LIMIT_BYTES to the
    writer's own threshold, and the writer's checkpoint then held one commit for 50-70 ms
    every ~9 s at 10,000 readings/s (docs/benchmarks.md, "ACK latency"). The write turn
    holds the writer for a copy of at most FINISH_FRAMES pages. Returns the last
    checkpoint's (busy, frames in the WAL, frames copied).
    """
    row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    _busy, frames, copied = row
    if frames >= restart_frames and 0 <= frames - copied <= finish_frames:
        with store.write_turn(conn):
            row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return (int(row[0]), int(row[1]), int(row[2]))


class Pace:
    """How long the process rests after a step: it takes at most a share of one core.

    Compacting a live window is a burst of CPU (about 6 s of it for a 2-minute window at
    10,000 readings/s) that has two minutes to finish; run flat out, it takes a core from
    the daemon's event loop, its writer thread and whatever else runs on the host just
    then, and the ACK latency's tail is made of that (docs/benchmarks.md, "ACK latency").
    So after a step of d seconds it rests d * (1 - share) / share. The share starts at
    MIN_SHARE and grows to 1 while work keeps waiting without a break (over RAMP_S): a
    backlog (a replay, a restart) still gets the whole core after that, so compaction
    keeps up with any ingest rate it kept up with before. Pure timekeeping.
    """

    def __init__(
        self, min_share: float = MIN_SHARE, ramp_s: float = RAMP_S, max_pause_s: float = MAX_PAUSE_S
    ) -> None:
        self.min_share = min_share
        self.ramp_s = ramp_s
        self.max_pause_s = max_pause_s
        self.pending_since: float | None = None

    def share(self, now: float) -> float:
        if self.pending_since is None or self.ramp_s <= 0:
            return 1.0 if self.ramp_s <= 0 else self.min_share
        ramp = min(1.0, (now - self.pending_since) / self.ramp_s)
        return self.min_share + (1.0 - self.min_share) * ramp

    def pause_s(self, t0: float, t1: float, *, more: bool) -> float:
        """The rest after a step that ran from t0 to t1 (monotonic seconds); `more`: work
        is waiting. Nothing waiting: no rest (the loop polls anyway), and the ramp starts
        over."""
        if not more:
            self.pending_since = None
            return 0.0
        if self.pending_since is None:
            self.pending_since = t0
        share = self.share(t0)
        if share >= 1.0:
            return 0.0
        return min(self.max_pause_s, (t1 - t0) * (1.0 - share) / share)


def _pause(inbox: Inbox, activity: Activity, seconds: float) -> bool:
    """Rest `seconds`, applying the activity reports meanwhile; False on stop."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if not _receive(inbox, activity, left):
            return False
    return True


class Turns:
    """Who writes next: the maintenance process goes first when it wants to.

    Two cross-process locks: `turnstile`, held by the process from before it waits for the
    write lock until its commit, and `mutex`, held by either side around each write
    transaction. The writer passes the turnstile before it takes the mutex, so once the
    process wants to write, the writer finishes the transaction in progress and waits
    (woken by the kernel the moment the process commits, no polling). Without this the
    process rarely got the SQLite lock at all: SQLite's busy handler sleeps between tries
    while the writer begins its next transaction microseconds after each commit.
    The locks only order the two; SQLite's lock still guards the file, so a side that
    times out waiting (a process killed mid-step never releases them) goes on without.
    """

    def __init__(self, ctx: multiprocessing.context.SpawnContext) -> None:
        self.turnstile = ctx.Lock()
        self.mutex = ctx.Lock()

    @contextlib.contextmanager
    def writer(self) -> Iterator[None]:
        if self.turnstile.acquire(timeout=MAX_TURN_WAIT_S):
            self.turnstile.release()
        with self._mutex():
            yield

    @contextlib.contextmanager
    def maintainer(self) -> Iterator[None]:
        with self.turnstile, self._mutex():
            yield

    @contextlib.contextmanager
    def _mutex(self) -> Iterator[None]:
        held = self.mutex.acquire(timeout=MAX_TURN_WAIT_S)
        try:
            yield
        finally:
            if held:
                self.mutex.release()


class FileTurns:
    """Turns (same protocol) through `flock(2)` on two lock files beside the database, for
    writers in several processes: the kernel wakes a waiter the moment the holder lets go
    (SQLite's own busy handler sleeps 1, 2, 5, 10... ms between tries), and releases the
    locks of a process that dies, so no timeout is needed. Picklable: each process opens
    the files itself."""

    def __init__(self, db: str) -> None:
        self.paths = (f"{db}-turnstile.lock", f"{db}-write.lock")
        self._fds: tuple[int, int] | None = None
        self._pid = 0

    def __getstate__(self) -> tuple[str, str]:
        return self.paths

    def __setstate__(self, paths: tuple[str, str]) -> None:
        self.paths, self._fds, self._pid = paths, None, 0

    def _open(self) -> tuple[int, int]:
        if self._fds is None or self._pid != os.getpid():
            flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
            turnstile, mutex = self.paths
            self._fds = (os.open(turnstile, flags, 0o600), os.open(mutex, flags, 0o600))
            self._pid = os.getpid()
        return self._fds

    @contextlib.contextmanager
    def writer(self) -> Iterator[None]:
        turnstile, mutex = self._open()
        fcntl.flock(turnstile, fcntl.LOCK_EX)  # waits while the maintainer wants to write
        fcntl.flock(turnstile, fcntl.LOCK_UN)
        fcntl.flock(mutex, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(mutex, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def maintainer(self) -> Iterator[None]:
        turnstile, mutex = self._open()
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(mutex, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(mutex, fcntl.LOCK_UN)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)


class _TakingTurns(sqlite3.Connection):
    """The process's connection: its write transactions
    (collector.storage.sqlite.blockwrites.transaction) run inside `write_turn()`."""

    turns: WriterTurns

    def write_turn(self) -> contextlib.AbstractContextManager[None]:
        return self.turns.maintainer()


def _receive(inbox: Inbox, activity: Activity, wait_s: float) -> bool:
    """Apply the activity reports waiting (the first up to `wait_s`); False on stop."""
    try:
        item = inbox.get(timeout=wait_s) if wait_s else inbox.get_nowait()
        while True:
            if item is _Stop:
                return False
            activity.touch(item)
            item = inbox.get_nowait()
    except queue.Empty:
        return True


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when the daemon dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
