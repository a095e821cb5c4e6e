"""The storage interface: what ingest, query and web may ask of wherever readings are kept.

`Storage` is the one face of a backend (today `collector.storage.sqlite.backend.SQLiteStorage`;
a PostgreSQL backend is to join it). Each method's docstring states the guarantee every
backend gives; tests/storage/test_conformance.py checks them against each backend.

The value types a backend takes and returns live here too, so that ingest, query and the
backends share them without importing each other: a validated batch (`PreparedBatch`, built
by `collector.ingest.prepare`), a session (`Session`), a device (`Device`), a series filter
(`Filters`) and a resolved series (`SeriesInfo`).

Threads: the ingest methods (`authenticate`, `open_session`, `store`) are called by one thread
at a time, the one writer's. Read and administration methods may be called from any thread,
each call on its own consistent snapshot. No method blocks on another process for longer
than the backend's lock timeout; a storage failure raises the backend's error (sqlite3.Error
for SQLite), and a failed write stores nothing.

Imports only the standard library and schemas: no backend, no SQL.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple, Protocol, TypeAlias

from schemas.wire import Reject

SeriesKey: TypeAlias = tuple[str, str, str, str, str]
"""(sensor, field, kind, unit, tags_json) of one stored series, without the device."""

StoredValue: TypeAlias = int | float | str
Value: TypeAlias = int | float | str | None
Order = Literal["asc", "desc"]
Agg = Literal["avg", "min", "max", "sum", "count", "first", "last"]
Row = dict[str, object]


# ---------------------------------------------------------------- what ingest hands over


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One rejected reading as the dead-letter table stores it."""

    index: int
    raw: bytes
    reading: str
    code: str
    path: str
    message: str


@dataclass(frozen=True, slots=True)
class RejectedFilter:
    """Which dead letters `Storage.rejected` lists and how: device globs (SQLite GLOB
    syntax), a receive-time range [since_ns, until_ns), reject codes (empty: any), only the
    ones not replayed yet; by (receive time, id) in `order`, at most `limit`; `after`: a
    (received_ns, id) key, only rows after it in `order` (pagination)."""

    devices: tuple[str, ...] = ()
    since_ns: int | None = None
    until_ns: int | None = None
    codes: tuple[str, ...] = ()
    pending_only: bool = False
    order: Order = "asc"
    limit: int | None = None
    after: tuple[int, int] | None = None


ALL_DEAD_LETTERS: Final = RejectedFilter()


@dataclass(slots=True)
class PreparedBatch:
    """A validated batch in storage shape.

    Scalar readings come first, one row each (`scalar_rows` of them); the rows after them
    belong to composite readings, `composite_sizes[i]` rows per composite reading, in order.
    Columns are parallel lists, one entry per row.
    """

    seq: int
    received_ns: int
    keys: list[SeriesKey] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    values: list[StoredValue] = field(default_factory=list)
    scalar_rows: int = 0
    composite_sizes: list[int] = field(default_factory=list)
    valid_count: int = 0
    rejects: tuple[Reject, ...] = ()
    dead_letters: tuple[DeadLetter, ...] = ()

    @property
    def row_count(self) -> int:
        return len(self.ts)


class Session(NamedTuple):
    """Who sent a batch: the device, its sequence stream, and the epoch its session got at
    HELLO (`Storage.open_session`). Epoch 0 is never fenced (in-process callers without a
    HELLO: tests, dead-letter replay)."""

    device_id: int
    stream: str = ""
    epoch: int = 0


class Stored(NamedTuple):
    """What happened to one batch of a committed group."""

    accepted: int
    duplicate: int
    resend: bool = False
    # Not stored: a newer session of the same (device, stream) holds the stream now.
    fenced: bool = False


class StoreResult(NamedTuple):
    """`Storage.store`'s answer: one outcome per batch, in order, and the batches whose
    readings were stored (not resends that stored nothing)."""

    outcomes: list[Stored]
    stored: list[PreparedBatch]


class SessionStart(NamedTuple):
    """A session of (device, stream) just opened: where the agent resumes, and its epoch."""

    last_seq: int
    epoch: int


# ---------------------------------------------------------------- devices


class DeviceError(Exception):
    """A registry operation failed: bad name, duplicate, unknown device."""


# Device names appear in logs, metrics labels and URLs: keep them short and plain.
DEVICE_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}$")


def check_name(name: str) -> None:
    """Raises DeviceError when `name` is not a valid device name."""
    if not DEVICE_NAME_RE.match(name):
        raise DeviceError(
            f"invalid device name {name!r}: use 1-64 letters, digits, '_', '.', ':' or '-'"
        )


@dataclass(frozen=True, slots=True)
class Device:
    id: int
    name: str
    created_ns: int
    revoked_ns: int | None
    last_seq: int
    last_seen_ns: int | None
    spool_dropped: int


@dataclass(frozen=True, slots=True)
class AuthResult:
    """Outcome of a HELLO: the device (when accepted) or the reason it was refused."""

    device: Device | None
    reason: str = ""
    registered: bool = False


# ---------------------------------------------------------------- the read side


@dataclass(frozen=True, slots=True)
class Filters:
    """Which series a query covers; empty tuples mean "any". Globs use SQLite GLOB syntax."""

    devices: tuple[str, ...] = ()
    sensors: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class SeriesInfo:
    """One row of the series table joined with its device name (treat as read-only).

    Not frozen: a frozen dataclass's __init__ costs 3x more, and a latest-per-series query
    builds one per series.
    """

    id: int
    device: str
    sensor: str
    field: str
    kind: str
    unit: str
    tags: dict[str, str]
    first_ts: int | None
    last_ts: int | None
    last_value: object
    count: int
    vtype: str | None = None  # the value type of this kind/field, for output conversion


class TailCursor(Protocol):
    """Readings committed after the cursor was opened (`Storage.tail`). Used by one caller
    at a time, from any thread (an event stream polls it from worker threads)."""

    def poll(self) -> list[Row]:
        """Readings committed since the last poll, ordered by (ts, series id); each reading
        at most once. A reading older than its series' newest stored one when it arrives is
        not shown (per-series marks, see collector.storage.sqlite.tail)."""
        ...

    def rewind(self, ts_ns: int, series_id: int) -> None:
        """Follow from just after the reading keyed (ts_ns, series_id) instead of from now:
        the next poll returns every stored reading of the followed series that sorts after
        that key (timestamp, then series id), then goes on as before. Resumes an event
        stream from its Last-Event-ID."""
        ...

    def close(self) -> None: ...


class Preparer(Protocol):
    """Validates readings into a batch (collector.ingest.prepare.Ingest is one)."""

    def prepare(self, seq: int, readings: Sequence[object], received_ns: int) -> PreparedBatch: ...


class ReplayResult(NamedTuple):
    """What a replay did: rejects looked at, moved into the readings, still failing."""

    checked: int
    replayed: int
    still_rejected: int


# ---------------------------------------------------------------- copying between backends


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A device as a backend keeps it, for copying it to another backend (`telemetry
    migrate`): the token only as its stored hash (SHA-256 hex), and each stream's last
    committed seq, so agents resume where they were."""

    name: str
    token_hash: str
    created_ns: int
    revoked_ns: int | None
    spool_dropped: int
    streams: tuple[tuple[str, int], ...] = ()  # (stream, last_seq)


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """One dead letter as kept, with its device's name, for copying between backends."""

    device: str
    received_ns: int
    seq: int
    letter: DeadLetter
    replayed_ns: int | None = None


# ---------------------------------------------------------------- the writer's session


class StorageError(Exception):
    """A storage failure seen through a `WriteSession` (disk full, I/O error, lock timeout,
    lost connection); the backend's own error is its `__cause__`. Nothing of the failed call
    is stored, and the same session may be used again: the next call tries again."""


# Called as (the backend's write connection, now_ns) by `WriteSession.maintain`, in the
# writer thread, outside any ingest transaction. Any: the connection's type is the backend's
# (sqlite3.Connection for SQLite), and a hook is written for one backend.
MaintenanceHook: TypeAlias = Callable[[Any, int], "bool | None"]


class WriteSession(Protocol):
    """The one writer's handle on the storage (`Storage.writer_session`): used by one thread,
    the one that opened it. Each method raises `StorageError` on a storage failure."""

    # True when `maintain` has work to do: the writer then paces calls to it between group
    # commits (collector.ingest.pacing). False: the writer never calls it.
    maintains: bool

    def authenticate(
        self, name: str, token: str, now_ns: int, *, allow_unknown: bool = False
    ) -> AuthResult:
        """As `Storage.authenticate`."""
        ...

    def open_session(
        self, device_id: int, stream: str, now_ns: int, *, spool_dropped: int = 0
    ) -> SessionStart:
        """As `Storage.open_session`."""
        ...

    def store(self, group: Sequence[tuple[Session | int, PreparedBatch]]) -> StoreResult:
        """As `Storage.store`: atomic, durable when it returns; on StorageError nothing of
        the group is stored."""
        ...

    def maintain(self, now_ns: int) -> bool:
        """One bounded step of maintenance in the writer thread (keep it under ~0.3 s),
        between group commits and outside any ingest transaction; True when more work is
        waiting. It never deletes or renumbers series. A failure rolls its own work back
        and raises StorageError."""
        ...

    def close(self) -> None:
        """Release the write connection (in the thread that opened the session)."""
        ...


@dataclass(frozen=True, slots=True)
class StorageStats:
    """What the storage holds right now, for /metrics: is compaction keeping up, how big is
    it. A backend without a head/blocks split reports its own nearest equivalents (0 when
    it has none)."""

    head_rows: int
    head_oldest_ns: int | None
    blocks: int
    small_blocks: int
    db_bytes: int
    wal_bytes: int
    free_bytes: int


# ---------------------------------------------------------------- the interface


class Storage(Protocol):
    """Where readings, series, devices, sessions and dead letters are kept."""

    # ------------------------------------------------------------ ingest (the writer thread)

    def authenticate(
        self, name: str, token: str, now_ns: int, *, allow_unknown: bool = False
    ) -> AuthResult:
        """Check a HELLO's device name and token. Constant time in the token whether or not
        the device exists. A revoked device is refused. With `allow_unknown`, a valid name
        never seen before is registered with the token it presented; without it, nothing is
        written (any thread may call it: the foreign inputs do)."""
        ...

    def open_session(
        self, device_id: int, stream: str, now_ns: int, *, spool_dropped: int = 0
    ) -> SessionStart:
        """Open a session of (device, stream), durably, before returning.

        Returns the stream's last committed sequence number (0 for a new stream: the agent
        resumes after it) and a new epoch, higher than every earlier one of the stream: from
        now on a batch stored under an older epoch is fenced (`Stored.fenced`), in this
        process or any other sharing the storage. `spool_dropped` readings the agent lost
        are added to the device's count."""
        ...

    def store(self, group: Sequence[tuple[Session | int, PreparedBatch]]) -> StoreResult:
        """Store a group of validated batches atomically: all of it, or nothing (then raise).

        Per batch, in order: fenced (its session's epoch is not the stream's) → nothing
        stored. Otherwise every valid reading whose (series, ts) is not stored yet is stored
        exactly once (a resend, seq not above the stream's last, is treated row by row: a
        reading is counted `duplicate` only when its (series, ts) is stored), whatever
        compaction has done meanwhile; the dead letters are kept (a resend's only if not
        kept before); the stream's last seq becomes the highest seq stored; each series'
        latest value moves to its newest reading. Returns when the group is durable."""
        ...

    # ------------------------------------------------------------ read side (any thread)

    def resolve_series(self, filters: Filters, *, after_id: int = 0) -> list[SeriesInfo]:
        """Series matching `filters` (ids above `after_id`), by device, sensor, field, id.
        Series ids only grow; a series' key (device, sensor, field, kind, unit, tags) never
        changes."""
        ...

    def read_range(
        self,
        series_ids: Sequence[int],
        since_ns: int | None,
        until_ns: int | None,
        *,
        order: Order = "asc",
        limit: int | None = None,
    ) -> Iterator[tuple[int, int, Value]]:
        """(series_id, ts_ns, value) in [since, until), ordered by (ts, series_id) (reversed
        for "desc"), each stored reading exactly once, from one snapshot. Streams: memory
        does not grow with the range. Raises ValueError for a bad order or limit."""
        ...

    def aggregate(
        self,
        series_ids: Sequence[int],
        since_ns: int | None,
        until_ns: int | None,
        every_ns: int,
        agg: Agg,
    ) -> Iterator[tuple[int, int, float | int | None]]:
        """(series_id, bucket_start_ns, value) per non-empty bucket [k*every, (k+1)*every),
        by series then bucket; the same numbers as aggregating `read_range`'s readings.
        Raises ValueError for a non-positive every_ns or an unknown aggregate."""
        ...

    def latest(self, series_ids: Sequence[int] | None = None) -> list[tuple[int, int, Value]]:
        """(series_id, ts_ns, value) of each series' newest reading, by series id; series
        without readings are left out. Cheap: never scans readings."""
        ...

    def tail(self, filters: Filters) -> TailCursor:
        """A cursor over readings committed from now on, for the matching series."""
        ...

    def rejected(self, which: RejectedFilter = ALL_DEAD_LETTERS) -> list[Row]:
        """The dead letters `which` selects, by (receive time, id): id, received (RFC 3339)
        and received_ns, device, seq, idx, code, path, message, the reading as JSON text,
        and when it was replayed (RFC 3339, None while pending)."""
        ...

    def stats(self) -> StorageStats:
        """The storage gauges of /metrics, read now (may take tens of milliseconds: call it
        off the event loop). Raises StorageError when the storage cannot be read."""
        ...

    # ------------------------------------------------------------ administration

    def add_device(self, name: str, now_ns: int, *, token: str | None = None) -> tuple[Device, str]:
        """Register a device; returns it and its token (the only time the token is known:
        only a hash is kept). Raises DeviceError for a bad or duplicate name."""
        ...

    def list_devices(self) -> list[Device]:
        """Every registered device, revoked ones included, by name."""
        ...

    def device_named_by_token(self, token: str) -> str | None:
        """The name of the device whose token `token` is (revoked ones included), found by
        the token's stored hash; None when no device has it. Reads only."""
        ...

    def forward_key(self, name: str) -> tuple[Device, str] | None:
        """The device called `name` (revoked ones included) and its forward key: the SHA-256
        hex digest of its token's UTF-8 bytes, which is what the registry keeps (the Fluent
        forward handshake's shared key, docs/inputs.md). None for an unknown or invalid name.
        Reads only."""
        ...

    def revoke_device(self, name: str, now_ns: int) -> Device:
        """Refuse the device's next HELLO; its stored readings stay. Idempotent (the first
        revocation time is kept). Raises DeviceError for an unknown name."""
        ...

    def apply_retention(self, cutoff_ns: int) -> None:
        """Drop readings before `cutoff_ns`. Never drops a reading at or after it; may keep
        some before it (a backend drops whole blocks of time)."""
        ...

    def replay_rejected(
        self, prepare: Preparer, *, devices: Sequence[str] = (), now_ns: int
    ) -> ReplayResult:
        """Re-validate pending dead letters with `prepare`; store the ones that now pass as
        live ingest would (minus the seq check) and mark them replayed at `now_ns`, in the
        same transaction, so a second run moves nothing twice."""
        ...

    # ------------------------------------------------------------ copying between backends

    def export_devices(self) -> list[DeviceRecord]:
        """Every device with its token hash, revocation, dropped count and streams."""
        ...

    def import_device(self, record: DeviceRecord) -> Device:
        """Register a device copied from another backend, keeping its token hash (so its
        agents' tokens still work), revocation and streams. Idempotent: importing the same
        record again changes nothing, and a stream's last seq is never lowered. Raises
        DeviceError when a device of that name exists with another token hash."""
        ...

    def export_dead_letters(self) -> Iterator[DeadLetterRecord]:
        """Every dead letter, by (receive time, id), streamed."""
        ...

    def import_dead_letters(self, records: Sequence[DeadLetterRecord]) -> int:
        """Keep dead letters copied from another backend, in one transaction; one already
        kept (same device, receive time, seq, index and raw bytes) is skipped, so a second
        import adds nothing. Returns how many were added. Raises DeviceError for a device
        that is not registered here (import devices first)."""
        ...

    # ------------------------------------------------------------ the daemon

    def writer_session(
        self, *, synchronous: str = "FULL", maintenance: MaintenanceHook | None = None
    ) -> WriteSession:
        """Open the write session of the one writer (call it in the writer thread).

        `synchronous` is how durable a commit is before it returns ("FULL", "NORMAL"; a
        backend may have only one level, then it ignores this). `maintenance` replaces the
        backend's own maintenance by a hook `WriteSession.maintain` runs (tests). When
        `start_background` ran first, the session cooperates with that background work
        (SQLite: takes turns at the write lock, reports which time windows received
        readings). Raises StorageError when the storage cannot be opened for writing."""
        ...

    def start_background(self, *, retention_ns: int | None, shared: bool = False) -> None:
        """Start the backend's own background work (SQLite: the maintenance process that
        compacts, applies retention with `retention_ns`, checkpoints), if it has any; `close`
        stops it. Call once, before `writer_session`. `shared`: writers in other processes
        will join it (`background_link`). Raises OSError when it cannot start."""
        ...

    def background_link(self) -> object | None:
        """What a writer in another process of the same daemon needs to cooperate with this
        storage's background work and with the other writers (picklable; hand it to
        `join_background` there). None when the backend needs nothing (PostgreSQL: row
        locks order the writers). Call after `start_background(shared=True)`."""
        ...

    def join_background(self, link: object | None) -> None:
        """In another process: the writer sessions opened from now on cooperate with the
        background work `link` came from (`background_link`). None: nothing to join."""
        ...

    def check_background(self) -> None:
        """Start the background work again if it died (a watchdog calls this every few
        seconds); nothing when none was started."""
        ...

    def background_restarts(self) -> int:
        """How many times `check_background` had to start the background work again."""
        ...

    def close(self) -> None:
        """Stop the background work (`start_background`) and release connections. The
        storage is not used afterwards."""
        ...
