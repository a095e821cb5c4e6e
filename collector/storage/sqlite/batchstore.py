"""How a group of prepared batches is stored in one write transaction.

`BatchStore.store(conn, group)` is what the writer thread (collector.ingest.writer) does with each
group it takes off its queue. Per (device, stream) of the group it reads the committed
`streams` row under the write lock: a batch sent under an epoch that is no longer the
stream's (a newer HELLO fenced its session, in this process or another) is not stored at all
and comes back `fenced`. Every other batch is stored: its series ids are resolved (an
in-memory cache; new series are inserted in the same transaction), the readings already
stored are dropped, and the rest go into the head as one packed chunk per (series, chunk
window) (collector.storage.sqlite.headchunks). A resend (seq not above the stream's last seq)
is stored the same way: its readings that were never stored are stored and counted
accepted, so a reading is never answered "duplicate" unless its (series, timestamp) is
stored. Then the series stats, the streams' `last_seq` (and `devices.last_seq` for the
default stream), the dead-letter rows, and COMMIT.

Dedup is exact before anything is inserted (the head has no (series, ts) key): a series
whose readings in the batch are all newer than its newest stored reading (series.last_ts,
cached) takes the fast path, no lookup; otherwise its stored timestamps from the batch's
oldest reading on are read (its overlapping head chunks, and the blocks below the
compaction horizon, store.m0004) and those readings dropped; within a group the first of
equal (series, ts) wins. So there is no optimistic pass to undo and no savepoint per batch.

The caches (series ids, series last_ts, the horizon) only ever hold committed state:
whatever a rolled-back transaction added to them is taken out again. Another connection
(the maintenance process, another collector process sharing the file) may commit between
two transactions: `PRAGMA data_version`, read under the write lock, tells, and the cached
last_ts are then read again as needed. Stream rows are read fresh in every transaction.

Runs in the writer thread only; no queue, no threads, no event loop.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from itertools import groupby
from operator import itemgetter
from typing import Final

from collector.storage.interface import PreparedBatch, SeriesKey
from collector.storage.interface import Session as Session
from collector.storage.interface import Stored as Stored
from collector.storage.sqlite import headchunks, scan, store

log = logging.getLogger(__name__)

_INSERT_REJECTED: Final = (
    f"INSERT INTO {store.REJECTED} (device_id, received_ns, seq, idx, raw, reading, code, "
    "path, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# ?N parameters are reused: 1 first_ts, 2 last_ts, 3 last_value, 4 count, 5 id. The right-hand
# sides see the old row, so last_value is compared against the old last_ts.
_UPDATE_SERIES: Final = (
    f"UPDATE {store.SERIES} SET first_ts = min(coalesce(first_ts, ?1), ?1), "
    "last_value = CASE WHEN last_ts IS NULL OR ?2 >= last_ts THEN ?3 ELSE last_value END, "
    "last_ts = max(coalesce(last_ts, ?2), ?2), count = count + ?4 WHERE id = ?5"
)
# ?1 seq, ?2 last seen, ?3 device id, ?4 stream. devices.last_seq mirrors the default stream.
_UPDATE_DEVICE: Final = (
    f"UPDATE {store.DEVICES} SET last_seq = CASE WHEN ?4 = '' THEN max(last_seq, ?1) "
    "ELSE last_seq END, last_seen_ns = ?2 WHERE id = ?3"
)
_UPSERT_STREAM: Final = (
    f"INSERT INTO {store.STREAMS} (device_id, stream, last_seq, created_ns, last_seen_ns) "
    "VALUES (?3, ?4, ?1, ?2, ?2) ON CONFLICT (device_id, stream) DO UPDATE SET "
    "last_seq = max(last_seq, ?1), last_seen_ns = ?2"
)
_DEAD_SEEN: Final = (
    f"SELECT 1 FROM {store.REJECTED} WHERE device_id = ? AND seq = ? AND idx = ? AND raw = ?"
)
_SELECT_STREAM: Final = (
    f"SELECT last_seq, epoch FROM {store.STREAMS} WHERE device_id = ? AND stream = ?"
)


class BatchStore:
    """The writer thread's view of committed state, and how it stores a group of batches."""

    def __init__(self) -> None:
        self._series: dict[int, dict[SeriesKey, int]] = {}
        # Rows with ts below this may already sit in a compacted block (0: no blocks yet).
        self._horizon = 0
        # Committed series.last_ts per series id (a series not here is read when needed);
        # valid while `PRAGMA data_version` is unchanged (no other connection committed).
        self._last: dict[int, int | None] = {}
        self._data_version = -1
        # This transaction's last_ts per series, over _last.
        self._txn_last: dict[int, int] = {}

    def store(
        self, conn: sqlite3.Connection, group: Sequence[tuple[Session | int, PreparedBatch]]
    ) -> tuple[list[Stored], list[PreparedBatch]]:
        """Store (device id, batch) pairs in one transaction, begun and committed here.

        Returns what happened to each batch and the batches whose readings were stored
        (not resends). Raises sqlite3.Error after rolling back; nothing is stored then.
        """
        new_series: list[tuple[int, SeriesKey]] = []
        outcomes: list[Stored] = []
        stored: list[PreparedBatch] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            self._begin(conn)
            stats: dict[int, list[object]] = {}
            # (device, stream) -> [last seq, epoch, seen_ns, stored]: committed, then this
            # group's (stored: 1 once a batch of it was stored in this transaction).
            streams: dict[tuple[int, str], list[int]] = {}
            dead: list[tuple[object, ...]] = []
            for who, b in group:
                sess = who if isinstance(who, Session) else Session(who)
                dev = sess.device_id
                st = streams.get(sess[:2])
                if st is None:
                    row = conn.execute(_SELECT_STREAM, sess[:2]).fetchone()
                    st = streams[sess[:2]] = [*(row or (0, 0)), 0, 0]
                if sess.epoch and sess.epoch != st[1]:
                    outcomes.append(Stored(0, 0, fenced=True))
                    continue
                # seq 0: an input without sequence numbers (InfluxDB line protocol, Fluent
                # forward), never a resend and leaving last_seq alone; (series, timestamp)
                # dedup alone keeps its retries from being stored twice.
                resend = 0 < b.seq <= st[0]
                accepted = self._insert(conn, dev, b, stats, new_series)
                if accepted or not resend:
                    stored.append(b)
                st[0] = max(st[0], b.seq)
                st[2], st[3] = b.received_ns, 1
                dead.extend(
                    (dev, b.received_ns, b.seq, d.index, d.raw, d.reading, d.code, d.path,
                     d.message)
                    for d in b.dead_letters
                    # A resend's rejects are kept once, unless first seen now.
                    if not resend or not conn.execute(_DEAD_SEEN, (dev, b.seq, d.index, d.raw))
                    .fetchone()
                )  # fmt: skip
                outcomes.append(Stored(accepted, b.valid_count - accepted, resend=resend))
            _write_stats(conn, stats)
            seen = [(st[0], st[2], d, name) for (d, name), st in streams.items() if st[3]]
            if seen:
                conn.executemany(_UPSERT_STREAM, seen)
                conn.executemany(_UPDATE_DEVICE, seen)
            if dead:
                conn.executemany(_INSERT_REJECTED, dead)
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            for dev, key in new_series:  # their ids were never committed
                self._series.get(dev, {}).pop(key, None)
            self._txn_last.clear()
            raise
        self._last.update(self._txn_last)
        self._txn_last.clear()
        return outcomes, stored

    def insert_unsequenced(
        self, conn: sqlite3.Connection, group: Sequence[tuple[int, PreparedBatch]]
    ) -> list[int]:
        """Store (device id, batch) pairs inside the caller's write transaction, with no seq
        check and no device row update (dead-letter replay, replay.py); returns how
        many of each batch's valid readings were new. If the caller rolls back, drop this
        store: its caches may name rows that were never committed."""
        self._begin(conn)
        stats: dict[int, list[object]] = {}
        accepted = [self._insert(conn, dev, b, stats, []) for dev, b in group]
        _write_stats(conn, stats)
        self._last.update(self._txn_last)
        self._txn_last.clear()
        return accepted

    def _begin(self, conn: sqlite3.Connection) -> None:
        """Read what another connection may have changed, under the write lock: the
        horizon (compaction, collector.storage.sqlite.maintainer, cannot move more readings
        into blocks before this transaction ends) and, when another connection committed
        since this one last looked (another collector process sharing the file, the
        maintainer), forget the cached series last_ts: they are read again as needed."""
        row = conn.execute(f"SELECT below_ns FROM {store.HORIZON}").fetchone()
        self._horizon = int(row[0]) if row else 0
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:
            self._last.clear()
            self._data_version = version
        self._txn_last.clear()

    def _last_ts(self, conn: sqlite3.Connection, sid: int) -> int | None:
        """The series' newest stored timestamp (None: none stored), this transaction's
        readings included."""
        last = self._txn_last.get(sid)
        if last is not None:
            return last
        try:
            return self._last[sid]
        except KeyError:
            row = conn.execute(f"SELECT last_ts FROM {store.SERIES} WHERE id = ?", (sid,))
            found = row.fetchone()
            value = None if found is None or found[0] is None else int(found[0])
            self._last[sid] = value
            return value

    def _insert(
        self,
        conn: sqlite3.Connection,
        dev: int,
        b: PreparedBatch,
        stats: dict[int, list[object]],
        new_series: list[tuple[int, SeriesKey]],
    ) -> int:
        """Store one batch's readings that are not stored yet; returns how many of its
        valid readings were new.

        Per series of the batch: when all its readings are newer than the series' newest
        stored one (the in-order case), they are all new unless one timestamp repeats in
        the batch; otherwise the series' stored timestamps from its oldest reading on are
        read (the head's overlapping chunks, and the blocks below the compaction horizon)
        and those readings dropped. Within the batch the first of equal (series, ts) wins.
        """
        if not b.ts:
            return 0
        sids = self._series_ids(conn, dev, b.keys, new_series)
        tss, values, lags = b.ts, b.values, b.lag_ms
        dropped: set[int] = set()
        chunks: list[tuple[object, ...]] = []
        # Row indexes per series, each in batch order, with no Python step per reading
        # (sorted is stable; groupby, itemgetter, map and min/max run in C).
        order = sorted(range(len(sids)), key=sids.__getitem__)
        for sid, group in groupby(order, key=sids.__getitem__):
            idx = list(group)
            if len(idx) == 1:
                ts, vals, lag = [tss[idx[0]]], [values[idx[0]]], [lags[idx[0]]]
            else:
                pick = itemgetter(*idx)
                ts, vals, lag = list(pick(tss)), list(pick(values)), list(pick(lags))
            last = self._last_ts(conn, sid)
            low = min(ts)
            if not ((last is None or low > last) and len(set(ts)) == len(ts)):
                keep = self._new_readings(conn, sid, idx, ts, low, last)
                if len(keep) < len(idx):
                    dropped.update(set(idx).difference(keep))
                    if not keep:
                        continue
                    ts = [tss[i] for i in keep]
                    vals = [values[i] for i in keep]
                    lag = [lags[i] for i in keep]
            chunks += headchunks.chunk_rows(sid, ts, vals, lag)  # type: ignore[arg-type]
            top = max(ts)
            if last is None or top > last:
                self._txn_last[sid] = top
            _fold(stats, sid, ts, vals, top)
        headchunks.write(conn, chunks)
        if not dropped:
            return b.valid_count
        mask = [i not in dropped for i in range(len(sids))]
        n = b.scalar_rows
        accepted = sum(mask[:n])
        for size in b.composite_sizes:
            accepted += any(mask[n : n + size])
            n += size
        return accepted

    def _new_readings(
        self,
        conn: sqlite3.Connection,
        sid: int,
        idx: list[int],
        ts: list[int],
        low: int,
        last: int | None,
    ) -> list[int]:
        """The row indexes of `idx` (one series' readings, timestamps `ts`) not stored yet,
        the first of a repeated timestamp only."""
        stored: set[int] = set()
        if last is not None and low <= last:
            stored = headchunks.stored_ts(conn, sid, low)
            if low < self._horizon:
                below = [(k, sid, t) for k, t in enumerate(ts) if t < self._horizon]
                stored.update(ts[k] for k in scan.held_in_blocks(conn, below))
        keep: list[int] = []
        for i, t in zip(idx, ts, strict=True):
            if t not in stored:
                stored.add(t)
                keep.append(i)
        return keep

    def _series_ids(
        self,
        conn: sqlite3.Connection,
        dev: int,
        keys: list[SeriesKey],
        new_series: list[tuple[int, SeriesKey]],
    ) -> list[int]:
        cache = self._series.get(dev)
        if cache is None:
            cache = self._series[dev] = {}
        try:
            return list(map(cache.__getitem__, keys))
        except KeyError:
            pass
        for key in dict.fromkeys(k for k in keys if k not in cache):
            row = conn.execute(
                f"SELECT id FROM {store.SERIES} WHERE device_id = ? AND sensor = ? AND field = ? "
                "AND kind = ? AND unit = ? AND tags = ?",
                (dev, *key),
            ).fetchone()
            if row is None:
                row = conn.execute(
                    f"INSERT INTO {store.SERIES} (device_id, sensor, field, kind, unit, tags) "
                    "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                    (dev, *key),
                ).fetchone()
                new_series.append((dev, key))
            cache[key] = int(row[0])
        return [cache[k] for k in keys]


def rollback(conn: sqlite3.Connection) -> None:
    """Roll back the transaction in progress, if any; a failure to do so is logged (the
    connection's next BEGIN fails the same way and is answered there)."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.warning("rollback failed error=%s", exc)


def _write_stats(conn: sqlite3.Connection, stats: dict[int, list[object]]) -> None:
    if stats:
        conn.executemany(_UPDATE_SERIES, [(*s, sid) for sid, s in stats.items()])


def _fold(
    stats: dict[int, list[object]], sid: int, ts: list[int], values: Sequence[object], top: int
) -> None:
    """Fold one series' new readings (distinct timestamps, `top` the largest) into its
    [first_ts, last_ts, last_value, count]."""
    first = min(ts)
    value = values[-1] if ts[-1] == top else values[ts.index(top)]
    s = stats.get(sid)
    if s is None:
        stats[sid] = [first, top, value, len(ts)]
        return
    if first < s[0]:  # type: ignore[operator]  # ints by construction
        s[0] = first
    if top >= s[1]:  # type: ignore[operator]  # ints by construction
        s[1] = top
        s[2] = value
    s[3] += len(ts)  # type: ignore[operator]  # int by construction
