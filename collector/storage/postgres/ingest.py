"""The store path: a group of prepared batches in one PostgreSQL transaction.

`GroupStore.store(conn, group)` is what the writer thread does with each group. In one
transaction, per (device, stream) of the group in a fixed order, it takes the `streams` row
with `SELECT ... FOR UPDATE`: the session epoch check and the `last_seq` update happen under
that row lock, in the same transaction as the readings, so two collectors sharing the
database serialise on a stream and exactly-once holds across them. A batch sent under an
epoch that is no longer the stream's stores nothing (`fenced`).

The readings of every other batch are resolved to series ids (an in-memory cache; new series
are inserted in the transaction), copied with COPY into a temporary table and moved with
`INSERT ... SELECT ... ORDER BY series_id, ts ON CONFLICT DO NOTHING`, one of two ways
(`_Rows`):

- Every reading new, the usual case: the group's rows are all staged (numbers as one
  binary COPY buffer built column by column in C, `_numeric_copy`; a group holding text
  with write_row, row by row) and moved without RETURNING. When the statement's row count
  equals the rows staged, no reading was a duplicate, of a stored one or within the group:
  every batch's valid readings are accepted, and the series stats and `latest` rows are
  computed by SQL from the staging table. Python does no per-reading work beyond the COPY
  buffer.
- Otherwise (a shortfall; or at once when the group holds a resend, which expects
  duplicates): rolled back to a savepoint taken before the COPY, the readings are
  de-duplicated within the group (the first occurrence of a (series, ts) is the one that
  counts), copied and moved with `... RETURNING series_id, ts`: what comes back is exactly
  the set of new readings, so accepted and duplicate are exact per batch (a resend's
  readings that were never stored are stored and counted accepted, as in SQLite); series
  stats and `latest` come from those.

COPY measured faster than a pipelined executemany (bench/bench_postgres.py --insert-methods;
docs/storage.md); the two ways' CPU per reading: bench/pg_store_cpu.py.

Every table's rows are locked in key order (readings by (series_id, ts), series, `latest`
and devices by id), so two writers wait for each other rather than deadlock. Then,
set-based (one statement each): the streams' `last_seq`, `devices.last_seq` (the default
stream's mirror) and last seen, the dead letters (a resend's only if not kept before), and
COMMIT: the group is durable when `store` returns (synchronous_commit).

Days without a partition are made before the transaction (collector.storage.postgres.schema):
DDL commits on its own, and an empty partition left by a failed group is harmless.

Runs in the writer thread only (and in a replay, on a connection of its own).
"""

from __future__ import annotations

import itertools
import logging
import operator
import struct
import sys
from array import array
from collections.abc import Sequence
from typing import Any, Final

from collector.storage.interface import PreparedBatch, SeriesKey, Session, StoredValue
from collector.storage.interface import Stored as Stored
from collector.storage.postgres import schema
from collector.storage.postgres.schema import Conn

log = logging.getLogger(__name__)

_STAGING: Final = "staging_readings"
_CREATE_STAGING: Final = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGING} (ts bigint NOT NULL, series_id integer NOT NULL, "
    "i bigint, f double precision, t text, b bytea) ON COMMIT DELETE ROWS"
)
_COPY: Final = f"COPY {_STAGING} (ts, series_id, i, f, t, b) FROM STDIN"
_COPY_NUMERIC: Final = f"COPY {_STAGING} (ts, series_id, i, f) FROM STDIN (FORMAT binary)"
_SAVEPOINT: Final = "SAVEPOINT staged"
_ROLLBACK_TO_SAVEPOINT: Final = "ROLLBACK TO SAVEPOINT staged"
_LITTLE_ENDIAN: Final = sys.byteorder == "little"
assert array("i").itemsize == 4 and array("q").itemsize == 8 and array("d").itemsize == 8
_MOVE: Final = (
    f"INSERT INTO {schema.READINGS} (ts, series_id, i, f, t, b) "
    f"SELECT ts, series_id, i, f, t, b FROM {_STAGING} ORDER BY series_id, ts "
    "ON CONFLICT DO NOTHING RETURNING series_id, ts"
)
# The common case, every staged row new (see _Rows): the same move without RETURNING, then
# (series rows locked by _LOCK_SERIES) series stats and latest from one aggregate pass over
# the staging table; `latest` rows are written in key order as above.
_MOVE_ALL: Final = _MOVE.removesuffix(" RETURNING series_id, ts")
_STAGED_STATS: Final = (
    f"WITH u AS MATERIALIZED (SELECT series_id, min(ts) AS first_ts, max(ts) AS last_ts, "
    f"count(*) AS n FROM {_STAGING} GROUP BY series_id), "
    f"s AS (UPDATE {schema.SERIES} AS s SET first_ts = least(s.first_ts, u.first_ts), "
    "count = s.count + u.n FROM u WHERE s.id = u.series_id) "
    f"INSERT INTO {schema.LATEST} AS l (series_id, ts, i, f, t, b) "
    f"SELECT r.series_id, r.ts, r.i, r.f, r.t, r.b FROM {_STAGING} AS r JOIN u "
    "ON r.series_id = u.series_id AND r.ts = u.last_ts ORDER BY r.series_id "
    "ON CONFLICT (series_id) DO UPDATE SET ts = excluded.ts, i = excluded.i, f = excluded.f, "
    "t = excluded.t, b = excluded.b WHERE l.ts <= excluded.ts"
)
# Row locks are taken in one order by every writer: streams, readings, series, latest and
# devices, each table's rows by key (ORDER BY above and here). Two collectors storing the
# same readings or series (a device on two streams, a failover) then wait for each other
# instead of deadlocking.
_LOCK_SERIES: Final = (
    f"SELECT 1 FROM {schema.SERIES} WHERE id = ANY(%s) ORDER BY id FOR NO KEY UPDATE"
)
_LOCK_DEVICES: Final = (
    f"SELECT 1 FROM {schema.DEVICES} WHERE id = ANY(%s) ORDER BY id FOR NO KEY UPDATE"
)
_UPDATE_SERIES: Final = (
    f"UPDATE {schema.SERIES} AS s SET first_ts = least(s.first_ts, u.first_ts), "
    "count = s.count + u.n FROM unnest(%s::integer[], %s::bigint[], %s::bigint[]) "
    "AS u(id, first_ts, n) WHERE s.id = u.id"
)
_UPSERT_LATEST: Final = (
    f"INSERT INTO {schema.LATEST} AS l (series_id, ts, i, f, t, b) "
    "SELECT * FROM unnest(%s::integer[], %s::bigint[], %s::bigint[], %s::float8[], "
    "%s::text[], %s::bytea[]) ORDER BY 1 "
    "ON CONFLICT (series_id) DO UPDATE SET ts = excluded.ts, i = excluded.i, f = excluded.f, "
    "t = excluded.t, b = excluded.b WHERE l.ts <= excluded.ts"
)
# Every stream of the group in one statement; the rows are locked in (device, stream) order
# (LockRows runs above the sort), so two collectors' groups cannot deadlock on them.
_LOCK_STREAMS: Final = (
    f"SELECT device_id, stream, last_seq, epoch FROM {schema.STREAMS} "
    "WHERE (device_id, stream) IN (SELECT * FROM unnest(%s::integer[], %s::text[])) "
    "ORDER BY device_id, stream FOR UPDATE"
)
_NEW_STREAMS: Final = (
    f"INSERT INTO {schema.STREAMS} (device_id, stream, last_seq, epoch, created_ns, "
    "last_seen_ns) SELECT d, s, 0, 0, n, n FROM unnest(%s::integer[], %s::text[], "
    "%s::bigint[]) AS u(d, s, n) ORDER BY d, s ON CONFLICT DO NOTHING"
)
_UPDATE_STREAMS: Final = (
    f"UPDATE {schema.STREAMS} AS s SET last_seq = greatest(s.last_seq, u.seq), "
    "last_seen_ns = u.seen FROM unnest(%s::integer[], %s::text[], %s::bigint[], "
    "%s::bigint[]) AS u(dev, stream, seq, seen) "
    "WHERE s.device_id = u.dev AND s.stream = u.stream"
)
# devices.last_seq mirrors the default stream "" (a v1.0 agent's); NULL: no default stream.
_UPDATE_DEVICES: Final = (
    f"UPDATE {schema.DEVICES} AS d SET last_seq = greatest(d.last_seq, u.seq), "
    "last_seen_ns = u.seen FROM unnest(%s::integer[], %s::bigint[], %s::bigint[]) "
    "AS u(id, seq, seen) WHERE d.id = u.id"
)
_INSERT_REJECTED: Final = (
    f"INSERT INTO {schema.REJECTED} (device_id, received_ns, seq, idx, raw, reading, code, "
    "path, message) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
_DEAD_SEEN: Final = f"SELECT idx, raw FROM {schema.REJECTED} WHERE device_id = %s AND seq = %s"

Columns = tuple[int | None, float | None, str | None, bytes | None]


def value_columns(v: StoredValue) -> Columns:
    """A value -> its (i, f, t, b) columns (collector.storage.postgres.schema)."""
    if isinstance(v, str):
        return (None, None, None, v.encode()) if "\x00" in v else (None, None, v, None)
    if isinstance(v, float):
        return (None, v, None, None)
    return (int(v), None, None, None)  # int, or bool stored as 0/1 as SQLite does


def clean_text(text: str) -> str:
    """Diagnostic text (dead-letter path and message) without NUL, which PostgreSQL text
    cannot hold: each becomes U+FFFD. The reading itself stays exact (raw bytes, JSON)."""
    return text.replace("\x00", "\ufffd")


class GroupStore:
    """The writer's view of committed state (series ids, partition days) and the store path."""

    def __init__(self) -> None:
        self._series: dict[int, dict[SeriesKey, int]] = {}
        self.days: set[int] | None = None  # days with a partition, read on first use

    # ------------------------------------------------------------ partitions

    def ensure_days(self, conn: Conn, ts: Sequence[int], now_ns: int) -> None:
        """Make the partitions `ts` need (schema.wanted_days) before a store transaction."""
        if self.days is None:
            self.days = schema.partition_days(conn)
        if not ts:
            return
        lo, hi = schema.day_of(min(ts)), schema.day_of(max(ts))
        if hi - lo < 8 and self.days.issuperset(range(lo, hi + 1)):
            return  # the usual case, without a look at each reading's day
        missing = schema.wanted_days(ts, now_ns) - self.days
        if missing:
            schema.ensure_partitions(conn, missing)
            self.days = schema.partition_days(conn)

    # ------------------------------------------------------------ the group transaction

    def store(
        self, conn: Conn, group: Sequence[tuple[Session | int, PreparedBatch]]
    ) -> tuple[list[Stored], list[PreparedBatch]]:
        """Store (session, batch) pairs in one transaction, begun and committed here.

        Returns what happened to each batch and the batches whose readings were stored
        (not resends that stored nothing, not fenced ones). Raises psycopg.Error after
        rolling back; nothing is stored then.
        """
        sessions = [(w if isinstance(w, Session) else Session(w), b) for w, b in group]
        for _, b in sessions:
            if b.ts:
                self.ensure_days(conn, b.ts, b.received_ns)
        new_series: list[tuple[int, SeriesKey]] = []
        try:
            with conn.transaction():
                return self._store(conn, sessions, new_series)
        except BaseException:
            for dev, key in new_series:  # their ids were never committed
                self._series.get(dev, {}).pop(key, None)
            raise

    def _store(
        self,
        conn: Conn,
        sessions: list[tuple[Session, PreparedBatch]],
        new_series: list[tuple[int, SeriesKey]],
    ) -> tuple[list[Stored], list[PreparedBatch]]:
        # (device, stream) -> [last seq, epoch, seen_ns, touched], locked in a fixed order so
        # that two collectors storing groups of the same streams cannot deadlock.
        streams: dict[tuple[int, str], list[int]] = {}
        received = {s[:2]: b.received_ns for s, b in sessions}
        keys = sorted(received)
        for _attempt in range(2):
            for dev, name, last_seq, epoch in conn.execute(
                _LOCK_STREAMS, ([k[0] for k in keys], [k[1] for k in keys])
            ):
                streams[(dev, name)] = [int(last_seq), int(epoch), 0, 0]
            missing = [k for k in keys if k not in streams]
            if not missing:
                break
            # A stream no session opened (epoch 0 callers): its row is made, then locked.
            conn.execute(
                _NEW_STREAMS,
                ([k[0] for k in missing], [k[1] for k in missing], [received[k] for k in missing]),
            )
            keys = missing
        assert len(streams) == len(received)
        rows = _Rows()
        plan: list[tuple[PreparedBatch, bool, int] | None] = []  # None: fenced
        dead: list[tuple[object, ...]] = []
        for sess, b in sessions:
            st = streams[sess[:2]]
            if sess.epoch and sess.epoch != st[1]:
                plan.append(None)
                continue
            # seq 0: an input without sequence numbers, never a resend (collector.storage.
            # sqlite.batchstore has the same rule).
            resend = 0 < b.seq <= st[0]
            first = rows.add(b, self._series_ids(conn, sess.device_id, b.keys, new_series))
            plan.append((b, resend, first))
            st[0] = max(st[0], b.seq)
            st[2], st[3] = b.received_ns, 1
            dead.extend(_dead_letters(conn, sess.device_id, b, resend, dead))
        new = rows.insert(conn, exact=any(p is not None and p[1] for p in plan))
        outcomes: list[Stored] = []
        stored: list[PreparedBatch] = []
        for item in plan:
            if item is None:
                outcomes.append(Stored(0, 0, fenced=True))
                continue
            b, resend, first = item
            accepted = _accepted(b, new, first)
            if accepted or not resend:
                stored.append(b)
            outcomes.append(Stored(accepted, b.valid_count - accepted, resend=resend))
        touched = sorted((k, st) for k, st in streams.items() if st[3])
        if touched:
            conn.execute(
                _UPDATE_STREAMS,
                tuple(
                    list(c) for c in zip(*[(*k, st[0], st[2]) for k, st in touched], strict=True)
                ),
            )
            devs: dict[int, list[int | None]] = {}  # device -> [default stream's seq, seen]
            for (dev, name), st in touched:
                d = devs.setdefault(dev, [None, st[2]])
                if name == "":
                    d[0] = st[0]
                d[1] = max(d[1] or 0, st[2])
            ids = sorted(devs)
            conn.execute(_LOCK_DEVICES, (ids,))
            conn.execute(
                _UPDATE_DEVICES, (ids, [devs[i][0] for i in ids], [devs[i][1] for i in ids])
            )
        if dead:
            with conn.cursor() as cur:
                cur.executemany(_INSERT_REJECTED, dead)
        return outcomes, stored

    def insert_unsequenced(
        self, conn: Conn, group: Sequence[tuple[int, PreparedBatch]]
    ) -> list[int]:
        """Store (device id, batch) pairs inside the caller's transaction, with no seq check
        and no stream update (dead-letter replay); returns how many of each batch's valid
        readings were new. The caller has made the partitions (`ensure_days`); if it rolls
        back, drop this store: its series cache may name rows never committed."""
        rows = _Rows()
        firsts = [rows.add(b, self._series_ids(conn, dev, b.keys, [])) for dev, b in group]
        new = rows.insert(conn)
        return [_accepted(b, new, first) for (_, b), first in zip(group, firsts, strict=True)]

    def _series_ids(
        self,
        conn: Conn,
        dev: int,
        keys: list[SeriesKey],
        new_series: list[tuple[int, SeriesKey]],
    ) -> list[int]:
        cache = self._series.get(dev)
        if cache is None:
            cache = self._series[dev] = {}
        try:
            return [cache[k] for k in keys]
        except KeyError:
            pass
        for key in sorted({k for k in keys if k not in cache}):
            sensor, fld, kind, unit, tags = key
            shown, raw = (
                (unit.replace("\x00", "\ufffd"), unit.encode()) if "\x00" in unit else (unit, None)
            )
            params = (dev, sensor, fld, kind, shown, tags, raw)
            row = conn.execute(
                f"SELECT id FROM {schema.SERIES} WHERE device_id = %s AND sensor = %s "
                "AND field = %s AND kind = %s AND unit = %s AND tags = %s "
                "AND unit_raw IS NOT DISTINCT FROM %s",
                params,
            ).fetchone()
            if row is None:
                # Another collector may insert the same series meanwhile: ON CONFLICT waits
                # for its transaction, then the SELECT finds its row.
                row = conn.execute(
                    f"INSERT INTO {schema.SERIES} (device_id, sensor, field, kind, unit, tags, "
                    "unit_raw) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING "
                    "RETURNING id",
                    params,
                ).fetchone()
                if row is None:
                    row = conn.execute(
                        f"SELECT id FROM {schema.SERIES} WHERE device_id = %s AND sensor = %s "
                        "AND field = %s AND kind = %s AND unit = %s AND tags = %s "
                        "AND unit_raw IS NOT DISTINCT FROM %s",
                        params,
                    ).fetchone()
                    assert row is not None
                else:
                    new_series.append((dev, key))
            cache[key] = int(row[0])
        return [cache[k] for k in keys]


class _Rows:
    """The readings of a group and, once inserted, which of them were new.

    `insert` first tries the common case: every row is new. All rows go to the staging
    table (numeric values as one binary COPY buffer built column-wise, `_numeric_copy`),
    are moved without RETURNING, and if the statement's row count equals the rows staged,
    nothing was a duplicate (neither of a stored reading nor within the group): the series
    stats and the latest table are computed by SQL from the staging table, with no per-row
    work in Python. Otherwise (a shortfall) it rolls back to a savepoint taken before the
    COPY and takes the exact path: first occurrence of each (series, ts) only, RETURNING
    the rows that were new, stats from those.
    """

    def __init__(self) -> None:
        self.parts: list[tuple[list[int], PreparedBatch]] = []
        self.count = 0

    def add(self, b: PreparedBatch, sids: list[int]) -> int:
        """Add a batch's rows; returns the group row number of its first row."""
        start = self.count
        self.parts.append((sids, b))
        self.count += b.row_count
        return start

    def insert(self, conn: Conn, *, exact: bool = False) -> list[bool] | None:
        """COPY, move into readings, update series stats and latest; per group row, new?
        None: every row was new. `exact`: duplicates are expected (a resend), take the
        exact path at once."""
        if not self.count:
            return None
        conn.execute(_CREATE_STAGING)
        if exact:
            return self._insert_exact(conn)
        conn.execute(_SAVEPOINT)
        with conn.cursor() as cur:
            ts: list[int] = []
            sids: list[int] = []
            values: list[StoredValue] = []
            for s, b in self.parts:
                ts += b.ts
                sids += s
                values += b.values
            buffer = _numeric_copy(ts, sids, values)
            with cur.copy(_COPY_NUMERIC if buffer is not None else _COPY) as copy:
                if buffer is not None:
                    copy.write(buffer)
                else:
                    for row in zip(ts, sids, values, strict=True):
                        copy.write_row((row[0], row[1], *value_columns(row[2])))
            cur.execute(_MOVE_ALL)
            if cur.rowcount == self.count:
                cur.execute(_LOCK_SERIES, (sorted(set(sids)),))
                cur.execute(_STAGED_STATS)
                return None
        conn.execute(_ROLLBACK_TO_SAVEPOINT)
        return self._insert_exact(conn)

    def _insert_exact(self, conn: Conn) -> list[bool]:
        first: dict[tuple[int, int], int] = {}  # (series, ts) -> row number in group
        rows: list[tuple[int, int, StoredValue, int]] = []  # first occurrences only
        values: list[StoredValue] = []
        n = 0
        for sids, b in self.parts:
            for sid, ts, v in zip(sids, b.ts, b.values, strict=True):
                values.append(v)
                key = (sid, ts)
                if key not in first:
                    first[key] = n
                    rows.append((ts, sid, v, n))
                n += 1
        new = [False] * n
        with conn.cursor() as cur:
            with cur.copy(_COPY) as copy:
                for ts, sid, v, _ in rows:
                    copy.write_row((ts, sid, *value_columns(v)))
            cur.execute(_MOVE)
            stored = cur.fetchall()
        # per series: [first_ts, count, last_ts, last value]
        stats: dict[int, list[object]] = {}
        for sid, ts in stored:
            row = first[(sid, ts)]
            new[row] = True
            s = stats.get(sid)
            if s is None:
                stats[sid] = [ts, 1, ts, values[row]]
                continue
            if ts < s[0]:
                s[0] = ts
            s[1] += 1  # type: ignore[operator]  # int by construction
            if ts > s[2]:
                s[2], s[3] = ts, values[row]
        if stats:
            ids = sorted(stats)
            conn.execute(_LOCK_SERIES, (ids,))
            conn.execute(
                _UPDATE_SERIES, (ids, [stats[i][0] for i in ids], [stats[i][1] for i in ids])
            )
            cols = [value_columns(stats[i][3]) for i in ids]  # type: ignore[arg-type]
            conn.execute(
                _UPSERT_LATEST,
                (ids, [stats[i][2] for i in ids], *(list(c) for c in zip(*cols, strict=True))),
            )
        return new


def _accepted(b: PreparedBatch, new: list[bool] | None, first: int) -> int:
    """Valid readings of `b` that were new (`new`: per group row, None: all of them): a
    composite reading counts once, when any of its rows was new."""
    n = b.scalar_rows
    if new is None:
        return n + sum(1 for size in b.composite_sizes if size)
    mask = new[first : first + b.row_count]
    accepted = sum(mask[:n])
    for size in b.composite_sizes:
        accepted += any(mask[n : n + size])
        n += size
    return accepted


# Binary COPY of the numeric rows, columns (ts, series_id, i, f): every row is 38 bytes,
# field count, then (length, bytes) per field, -1 for NULL; a float's row has i NULL, an
# int's (or a bool's, as 0/1) has f NULL.
_ROW_BYTES: Final = 38
_FLOAT_ROW: Final = struct.pack("!hiqiiiid", 4, 8, 0, 4, 0, -1, 8, 0.0)
_INT_ROW: Final = struct.pack("!hiqiiiqi", 4, 8, 0, 4, 0, 8, 0, -1)
_SIGNATURE: Final = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, no extension
_TRAILER: Final = b"\xff\xff"
_NUMERIC: Final = frozenset((float, int, bool))


def _numeric_copy(ts: list[int], sids: list[int], values: list[StoredValue]) -> bytes | None:
    """The rows as one binary COPY buffer, built column by column in C (array, strided
    slice assignment) rather than row by row; None when a value is not a number (text) or
    an int does not fit in 64 bits: those take write_row."""
    types = set(map(type, values))
    if not types <= _NUMERIC:
        return None
    if types == {float}:
        return _SIGNATURE + _fill(_FLOAT_ROW, 30, "d", ts, sids, values) + _TRAILER
    is_float = list(map(operator.is_, map(type, values), itertools.repeat(float)))
    is_int = list(map(operator.not_, is_float))
    try:
        ints = _fill(
            _INT_ROW, 26, "q", list(itertools.compress(ts, is_int)),
            list(itertools.compress(sids, is_int)), list(itertools.compress(values, is_int)),
        )  # fmt: skip
    except OverflowError:
        return None
    floats = _fill(
        _FLOAT_ROW, 30, "d", list(itertools.compress(ts, is_float)),
        list(itertools.compress(sids, is_float)), list(itertools.compress(values, is_float)),
    )  # fmt: skip
    return _SIGNATURE + floats + ints + _TRAILER


def _fill(
    template: bytes, value_at: int, code: str, ts: list[int], sids: list[int], values: list[Any]
) -> bytearray:
    buf = bytearray(template * len(ts))
    for column, at, width, typecode in (
        (ts, 6, 8, "q"), (sids, 18, 4, "i"), (values, value_at, 8, code),
    ):  # fmt: skip
        data = array(typecode, column)
        if _LITTLE_ENDIAN:
            data.byteswap()
        raw = data.tobytes()
        for k in range(width):
            buf[at + k :: _ROW_BYTES] = raw[k::width]
    return buf


def _dead_letters(
    conn: Conn, dev: int, b: PreparedBatch, resend: bool, pending: list[tuple[object, ...]]
) -> list[tuple[object, ...]]:
    if not b.dead_letters:
        return []
    seen: set[tuple[int, bytes]] = set()
    if resend:  # a resend's rejects are kept once, unless first seen now
        seen = {(int(i), bytes(r)) for i, r in conn.execute(_DEAD_SEEN, (dev, b.seq))}
        seen.update((p[3], p[4]) for p in pending if p[0] == dev and p[2] == b.seq)  # type: ignore[misc]  # (dev, ns, seq, idx, raw, ...)
    return [
        (dev, b.received_ns, b.seq, d.index, d.raw, clean_text(d.reading), d.code,
         clean_text(d.path), clean_text(d.message))
        for d in b.dead_letters
        if (d.index, d.raw) not in seen
    ]  # fmt: skip
