"""The durable, bounded on-disk queue of readings waiting for the collector's ACK.

One SQLite file in WAL mode (stdlib sqlite3), three tables:

    readings(id INTEGER PRIMARY KEY, seq INTEGER NULL, body BLOB)   body = msgpack wire array
    meta(key TEXT PRIMARY KEY, value INTEGER)                       next_seq, dropped, ...
    identity(stream TEXT)                                           the stream id (one row)

The stream id (protocol v1.1, HELLO.stream) is made with the spool: 32 hex digits of a random
128-bit value. The seq counter belongs to it, so a new spool (state lost) is a new stream
whose seq starts at 1, and the collector never takes its batches for resends of the old
one. A spool made before stream ids existed keeps the default stream "" and its numbering.

A reading is stored with seq NULL ("pending"). The transport seals a batch when it is about
to send: the oldest pending readings get the next seq number in one transaction, so a batch
keeps the same seq and the same readings across resends and agent restarts (the collector's
idempotency is keyed on seq). Sealed readings are deleted only when their batch is ACKed, or
when WELCOME.last_seq says it is already committed.

Only pending readings are ever dropped: a sealed batch may already be committed by the
collector (ACK lost), so dropping it would make the dropped count disagree with what is
missing. Sealed readings are bounded by one batch (the transport keeps one in flight), so
the cap holds to within one batch. `drop-oldest` deletes the oldest pending readings and adds
exactly that number to the persisted `dropped` counters in the same transaction; `block`
stores what fits and lets the caller wait (`wait_for_space`).

Thread-safe: every method takes one lock, so user threads (`agents.api`) and the event loop's
worker threads share one connection. Blocking: call it from a thread (`asyncio.to_thread`),
never from the event loop. Knows nothing about sockets or the protocol.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

import msgpack

from agents.config import SpoolPolicy

log = logging.getLogger(__name__)

# synchronous=NORMAL in WAL mode survives a process crash (SIGKILL) without an fsync per
# write; only an OS crash or power cut can lose the last transactions.
_PRAGMAS: Final = (
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA busy_timeout = 5000",
    # Small page cache: the spool is a queue, its hot pages are the two ends.
    "PRAGMA cache_size = -512",
)
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY,
    seq INTEGER,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS readings_by_seq ON readings(seq) WHERE seq IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS identity (stream TEXT NOT NULL);
"""
# Shortest gap between two "spool full" log lines.
DROP_LOG_INTERVAL_S: Final = 60.0
_META_DEFAULTS: Final = {
    "next_seq": 1,
    "dropped_total": 0,
    "dropped_unreported": 0,
    "rejected_total": 0,
    "acked_readings": 0,
}


class SpoolError(Exception):
    """The spool file cannot be opened or created (path, permissions, not a database)."""


@dataclass(frozen=True, slots=True)
class SealedBatch:
    seq: int
    readings: list[object]


@dataclass(frozen=True, slots=True)
class SpoolStats:
    pending: int
    sealed: int
    next_seq: int
    dropped_total: int
    dropped_unreported: int
    rejected_total: int
    acked_readings: int


class Spool:
    """A bounded queue of wire readings in one SQLite file."""

    def __init__(self, path: str | Path, *, max_readings: int, policy: SpoolPolicy) -> None:
        if max_readings < 1:
            raise ValueError("max_readings must be >= 1")
        self.path = Path(path)
        self.max_readings = max_readings
        self.policy = policy
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        self._listeners: list[Callable[[], None]] = []
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lockfile = _exclusive_lock(self.path.with_name(self.path.name + ".lock"))
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            for pragma in _PRAGMAS:
                self._db.execute(pragma)
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise SpoolError(f"cannot open spool {self.path}: {exc}") from None
        with self._tx():
            for key, value in _META_DEFAULTS.items():
                self._db.execute(
                    "INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)", (key, value)
                )
            if self._db.execute("SELECT count(*) FROM identity").fetchone()[0] == 0:
                # A spool that already numbered batches keeps the default stream.
                legacy = self._meta("next_seq") > 1
                # What secrets.token_hex(16) returns; importing `secrets` loads OpenSSL's
                # libcrypto through hashlib: 3.5 MB of the agent's RSS.
                self._db.execute(
                    "INSERT INTO identity(stream) VALUES (?)",
                    ("" if legacy else os.urandom(16).hex(),),
                )
        self.stream_id: str = self._db.execute("SELECT stream FROM identity").fetchone()[0]
        self._pending: int = self._db.execute(
            "SELECT count(*) FROM readings WHERE seq IS NULL"
        ).fetchone()[0]
        self._sealed: int = self._db.execute(
            "SELECT count(*) FROM readings WHERE seq IS NOT NULL"
        ).fetchone()[0]
        # Monotonic time the oldest pending reading arrived; readings found on disk at
        # start-up are old by definition, so they are due at once.
        self._oldest_pending_at: float | None = 0.0 if self._pending else None
        self._drops_unlogged = 0
        self._last_drop_log = -DROP_LOG_INTERVAL_S

    # -- helpers (caller holds the lock)

    def _tx(self) -> _Commit:
        self._db.execute("BEGIN IMMEDIATE")
        return _Commit(self._db)

    def _meta(self, key: str) -> int:
        (v,) = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(v)

    def _bump(self, key: str, delta: int) -> None:
        self._db.execute("UPDATE meta SET value = value + ? WHERE key = ?", (delta, key))

    def _notify_space(self) -> None:
        self._space.notify_all()
        for cb in self._listeners:
            cb()

    # -- producers

    def put(self, readings: Sequence[object]) -> int:
        """Store wire readings; returns how many were stored.

        drop-oldest stores all of them (dropping the oldest pending readings to make room,
        counted); block stores only what fits, and the caller waits for space for the rest.
        """
        if not readings:
            return 0
        bodies = [msgpack.packb(r, use_bin_type=True) for r in readings]
        with self._lock:
            free = self.max_readings - self._pending - self._sealed
            if self.policy == "block":
                bodies = bodies[: max(free, 0)]
                if not bodies:
                    return 0
            overflow = len(bodies) - free
            drop_old = drop_own = 0
            if overflow > 0:
                drop_old = min(overflow, self._pending)
                # A put larger than all the pending room drops its own oldest readings too.
                drop_own = min(overflow - drop_old, len(bodies))
                bodies = bodies[drop_own:]
            with self._tx():
                if drop_old:
                    self._db.execute(
                        "DELETE FROM readings WHERE id IN (SELECT id FROM readings "
                        "WHERE seq IS NULL ORDER BY id LIMIT ?)",
                        (drop_old,),
                    )
                if drop_old + drop_own:
                    self._bump("dropped_total", drop_old + drop_own)
                    self._bump("dropped_unreported", drop_old + drop_own)
                self._db.executemany(
                    "INSERT INTO readings(body) VALUES (?)", ((b,) for b in bodies)
                )
            self._pending += len(bodies) - drop_old
            if self._oldest_pending_at is None and self._pending:
                self._oldest_pending_at = time.monotonic()
        if drop_old + drop_own:
            self._log_drops(drop_old + drop_own)
        return len(bodies) + drop_own

    def _log_drops(self, n: int) -> None:
        # One line per DROP_LOG_INTERVAL_S at most: a device offline for days must not fill
        # its journal with a line per sample. The exact count is persisted either way.
        self._drops_unlogged += n
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_INTERVAL_S:
            log.warning(
                "spool full, dropped oldest readings dropped=%d cap=%d policy=drop-oldest",
                self._drops_unlogged,
                self.max_readings,
            )
            self._drops_unlogged = 0
            self._last_drop_log = now

    def wait_for_space(self, timeout: float | None = None) -> bool:
        """Block the calling thread until the spool has room; False on timeout."""
        with self._space:
            return bool(
                self._space.wait_for(
                    lambda: self._pending + self._sealed < self.max_readings, timeout
                )
            )

    def add_space_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from whichever thread frees space) whenever readings are removed."""
        with self._lock:
            self._listeners.append(callback)

    def remove_space_listener(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._listeners.remove(callback)

    # -- the transport side

    def due(self, max_readings: int, max_delay_s: float) -> float | None:
        """Seconds until a batch should be sealed (0: now), or None when nothing is pending."""
        with self._lock:
            if not self._pending or self._oldest_pending_at is None:
                return None
            if self._pending >= max_readings:
                return 0.0
            return max(0.0, self._oldest_pending_at + max_delay_s - time.monotonic())

    def sealed_batches(self) -> list[SealedBatch]:
        """Every sealed, unacknowledged batch, oldest first (for resend after reconnect)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, body FROM readings WHERE seq IS NOT NULL ORDER BY seq, id"
            ).fetchall()
        out: list[SealedBatch] = []
        for seq, body in rows:
            if not out or out[-1].seq != seq:
                out.append(SealedBatch(seq, []))
            out[-1].readings.append(msgpack.unpackb(body, raw=False))
        return out

    def seal(self, max_readings: int) -> SealedBatch | None:
        """Give the oldest pending readings (at most max_readings) the next seq number."""
        with self._lock:
            if not self._pending:
                return None
            with self._tx():
                seq = self._meta("next_seq")
                rows = self._db.execute(
                    "SELECT id, body FROM readings WHERE seq IS NULL ORDER BY id LIMIT ?",
                    (max_readings,),
                ).fetchall()
                self._db.execute(
                    "UPDATE readings SET seq = ? WHERE seq IS NULL AND id <= ?", (seq, rows[-1][0])
                )
                self._db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq + 1,))
            self._pending -= len(rows)
            self._sealed += len(rows)
            self._oldest_pending_at = time.monotonic() if self._pending else None
        return SealedBatch(seq, [msgpack.unpackb(b, raw=False) for _, b in rows])

    def ack(self, seq: int, rejected: int = 0) -> int:
        """Delete batch `seq` (the collector committed it); returns its reading count."""
        with self._lock:
            with self._tx():
                n = self._db.execute("DELETE FROM readings WHERE seq = ?", (seq,)).rowcount
                self._bump("acked_readings", n - rejected)
                self._bump("rejected_total", rejected)
            self._sealed -= n
            self._notify_space()
        return n

    def drop_batch(self, seq: int) -> int:
        """Drop sealed batch `seq`, which the collector can never accept (an ERROR named
        it); its readings count as dropped, reported in the next HELLO. Returns how many."""
        with self._lock:
            with self._tx():
                n = self._db.execute("DELETE FROM readings WHERE seq = ?", (seq,)).rowcount
                self._bump("dropped_total", n)
                self._bump("dropped_unreported", n)
            self._sealed -= n
            self._notify_space()
        return n

    def resume(self, last_seq: int) -> int:
        """Apply WELCOME.last_seq; returns how many sealed readings were already committed.

        Batches with seq <= last_seq are committed (their ACK was lost) and are deleted. If the
        collector knows a seq this spool never issued, the spool was reset: its sealed
        batches are renumbered after last_seq, or the collector would take them for resends.
        """
        with self._lock:
            with self._tx():
                next_seq = self._meta("next_seq")
                if last_seq >= next_seq:
                    log.warning(
                        "collector is ahead of this spool, renumbering last_seq=%d next_seq=%d",
                        last_seq,
                        next_seq,
                    )
                    (lo, hi) = self._db.execute(
                        "SELECT min(seq), max(seq) FROM readings WHERE seq IS NOT NULL"
                    ).fetchone()
                    new_next = last_seq + 1
                    if lo is not None:
                        shift = last_seq + 1 - lo
                        self._db.execute(
                            "UPDATE readings SET seq = seq + ? WHERE seq IS NOT NULL", (shift,)
                        )
                        new_next = hi + shift + 1
                    self._db.execute(
                        "UPDATE meta SET value = ? WHERE key = 'next_seq'", (new_next,)
                    )
                    n = 0
                else:
                    n = self._db.execute(
                        "DELETE FROM readings WHERE seq IS NOT NULL AND seq <= ?", (last_seq,)
                    ).rowcount
                    self._bump("acked_readings", n)
            self._sealed -= n
            if n:
                self._notify_space()
        return n

    def take_unreported_dropped(self) -> int:
        """The dropped count not yet told to the collector (for HELLO)."""
        with self._lock:
            return self._meta("dropped_unreported")

    def mark_dropped_reported(self, n: int) -> None:
        """The collector acknowledged (WELCOME) a HELLO that reported `n` dropped readings."""
        if n:
            with self._lock, self._tx():
                self._bump("dropped_unreported", -n)

    # -- inspection

    def stats(self) -> SpoolStats:
        with self._lock:
            return SpoolStats(
                pending=self._pending,
                sealed=self._sealed,
                next_seq=self._meta("next_seq"),
                dropped_total=self._meta("dropped_total"),
                dropped_unreported=self._meta("dropped_unreported"),
                rejected_total=self._meta("rejected_total"),
                acked_readings=self._meta("acked_readings"),
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._pending + self._sealed)

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._lockfile.close()  # releases the flock

    def iter_pending(self) -> Iterable[object]:
        """Pending (unsealed) readings, oldest first; for inspection and tests."""
        with self._lock:
            rows = self._db.execute(
                "SELECT body FROM readings WHERE seq IS NULL ORDER BY id"
            ).fetchall()
        return [msgpack.unpackb(b, raw=False) for (b,) in rows]


def _exclusive_lock(path: Path) -> IO[bytes]:
    """Hold an exclusive flock on `path` for the spool's lifetime.

    Two agents sharing one spool would send the same batches under one device id; the second
    gets SpoolError instead. The OS drops the lock when the process dies, even on SIGKILL.
    """
    f = open(path, "ab")  # held open until close()
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise SpoolError(f"spool {path.with_suffix('')} is in use by another agent") from None
    return f


class _Commit:
    """Commit on success, roll back on error: the body of a BEGIN IMMEDIATE block."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        return self._db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
