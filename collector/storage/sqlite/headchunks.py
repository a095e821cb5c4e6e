"""The head as chunks: one row per (series, chunk window, write) of packed readings.

The head (`tables.HEAD_CHUNKS`, store.m0006) holds the recent readings until the compactor
moves them into blocks. A batch's readings of one series that fall in one chunk window
[k * CHUNK_NS, (k + 1) * CHUNK_NS) are one row: their timestamps, values and lags packed
as arrays, sorted by timestamp, with (series_id, window_start, first_ts, last_ts, n)
beside them. CHUNK_NS is the compactor's window (compaction_config.WINDOW_NS), so a compaction
window (or a slot of them) is a range of whole chunk windows; the functions here still cut a
chunk at any [lo, hi) bound (a test's or a configuration's smaller window), reading and
rewriting only the chunks that straddle it.

Nothing here checks for duplicates: the head has no key on (series, ts). The writer
(collector.storage.sqlite.batchstore) drops readings already stored before it calls
`write`, using `stored_ts`; `insert` does the same for callers outside the writer (the
migration, tests, benchmarks). Every (series, ts) is therefore in the head at most once.

Packed forms (docs/storage.md):
    ts          little-endian int64 array
    lags        little-endian int32 array, int64 when a lag does not fit (the length tells),
                or NULL
    vals        one kind byte, then: b"d" float64 array (every value a float), b"q" int64
                array (every value an int), b"m" a msgpack array (text, None, mixed types,
                ints beyond int64). A value is read back with the type it was stored with;
                bools are stored as the ints 0/1, as the row head's SQLite column did.
"""

from __future__ import annotations

import sqlite3
import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from itertools import compress, groupby, repeat
from operator import itemgetter, lt
from typing import Final, TypeAlias, cast

import msgpack

from collector.storage.sqlite.compaction_config import WINDOW_NS
from collector.storage.sqlite.tables import HEAD_CHUNKS, SERIES

Value: TypeAlias = int | float | str | None
Row: TypeAlias = tuple[int, int, Value]  # (series_id, ts, value)

# Chunk windows are the compactor's windows (2 minutes), so it reads and deletes whole
# chunks. Measured against 1 minute on batches that span ten minutes of a series at one
# reading per 10 s (bench/load.py --total's shape): half the chunks, writer 1.20 against
# 1.85 µs per reading, compaction of the head 1.10 against 1.47.
CHUNK_NS: Final = WINDOW_NS

_LITTLE: Final = sys.byteorder == "little"
_FLOAT: Final = b"d"
_INT: Final = b"q"
_MSGPACK: Final = b"m"
_MIN_TS: Final = -(2**63)

_INSERT: Final = (
    f"INSERT INTO {HEAD_CHUNKS} (series_id, window_start, first_ts, last_ts, n, ts, vals, "
    "lags) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_COLS: Final = "id, series_id, first_ts, last_ts, n, ts, vals, lags"


def _window(ts: int) -> int:
    """Start of the chunk window holding `ts` (clamped to int64)."""
    return max(ts - ts % CHUNK_NS, _MIN_TS)


def _pack_ints(xs: Sequence[int]) -> bytes:
    a = array("q", xs)
    if not _LITTLE:
        a.byteswap()
    return a.tobytes()


def _unpack_ints(data: bytes) -> list[int]:
    a = array("q")
    a.frombytes(data)
    if not _LITTLE:
        a.byteswap()
    return a.tolist()


def encode_values(values: Sequence[Value]) -> bytes:
    """One kind byte and the values packed so that each one's type survives."""
    kinds = set(map(type, values))
    if kinds == {float}:
        a = array("d", cast("list[float]", values))
        if not _LITTLE:
            a.byteswap()
        return _FLOAT + a.tobytes()
    if kinds == {int}:
        try:
            return _INT + _pack_ints(cast("list[int]", values))
        except OverflowError:
            pass
    if bool in kinds:
        values = [int(v) if type(v) is bool else v for v in values]
    return _MSGPACK + msgpack.packb(values, use_bin_type=True)


def decode_values(data: bytes) -> list[Value]:
    kind = data[:1]
    if kind == _FLOAT:
        a = array("d")
        a.frombytes(data[1:])
        if not _LITTLE:
            a.byteswap()
        return list(a)
    if kind == _INT:
        return _unpack_ints(data[1:])  # type: ignore[return-value]  # list[int] is a list[Value]
    if kind == _MSGPACK:
        out: list[Value] = msgpack.unpackb(data[1:], raw=False)
        return out
    raise ValueError(f"unknown head value kind {kind!r}")


def decode_ts(data: bytes) -> list[int]:
    return _unpack_ints(data)


def _pack_lags(lags: list[int]) -> bytes:
    """int32 when every lag fits (~24 days), else int64: the blob's length tells which."""
    try:
        a = array("i", lags)
    except OverflowError:
        return _pack_ints(lags)
    if not _LITTLE:
        a.byteswap()
    return a.tobytes()


def decode_lags(data: bytes, n: int) -> list[int]:
    if len(data) == 8 * n:
        return _unpack_ints(data)
    a = array("i")
    a.frombytes(data)
    if not _LITTLE:
        a.byteswap()
    return a.tolist()


def chunk_rows(
    sid: int,
    ts: list[int],
    values: list[Value],
    lags: list[int] | None,
) -> list[tuple[object, ...]]:
    """The head rows (INSERT parameters) for one series' readings, distinct timestamps in
    any order: sorted by timestamp and cut at chunk windows."""
    if not all(map(lt, ts, ts[1:])):  # not strictly increasing (in C, no Python step)
        order = sorted(range(len(ts)), key=ts.__getitem__)
        ts = [ts[i] for i in order]
        values = [values[i] for i in order]
        if lags is not None:
            lags = [lags[i] for i in order]
    first_w = ts[0] - ts[0] % CHUNK_NS
    if ts[-1] < first_w + CHUNK_NS:  # the common case: one window
        return [_row(sid, first_w, ts, values, lags)]
    out = []
    i = 0
    while i < len(ts):
        w = ts[i] - ts[i] % CHUNK_NS
        j = bisect_left(ts, w + CHUNK_NS, i + 1)
        out.append(_row(sid, w, ts[i:j], values[i:j], None if lags is None else lags[i:j]))
        i = j
    return out


def _row(
    sid: int, w: int, ts: list[int], values: list[Value], lags: list[int] | None
) -> tuple[object, ...]:
    return (
        sid,
        w,
        ts[0],
        ts[-1],
        len(ts),
        _pack_ints(ts),
        encode_values(values),
        None if lags is None else _pack_lags(lags),
    )


def write(conn: sqlite3.Connection, rows: list[tuple[object, ...]]) -> None:
    """Insert chunk rows made by `chunk_rows` (no duplicate check: see the module doc)."""
    if rows:
        conn.executemany(_INSERT, rows)


def group_rows(
    rows: Iterable[tuple[int, int, Value, int | None]],
) -> dict[int, tuple[list[int], list[Value], list[int | None]]]:
    """(series_id, ts, value, lag) rows by series, in order, first occurrence of a (series,
    ts) only."""
    per: dict[int, tuple[list[int], list[Value], list[int | None]]] = {}
    seen: set[tuple[int, int]] = set()
    for sid, ts, value, lag in rows:
        if (sid, ts) in seen:
            continue
        seen.add((sid, ts))
        entry = per.get(sid)
        if entry is None:
            entry = per[sid] = ([], [], [])
        entry[0].append(ts)
        entry[1].append(value)
        entry[2].append(lag)
    return per


def insert(conn: sqlite3.Connection, rows: Iterable[Sequence[object]]) -> int:
    """Store (ts, series_id, value[, lag_ms]) rows that are not in the head yet (the first
    of equal (series, ts) wins), raising series.last_ts to match; returns how many were
    new. For callers outside the writer: the m0006 migration, tests and benchmarks (the
    writer has its own faster path). Inside the caller's transaction, if any."""
    new = 0
    out: list[tuple[object, ...]] = []
    norm = (
        (int(r[1]), int(r[0]), r[2], r[3] if len(r) > 3 else None)  # type: ignore[call-overload]
        for r in rows
    )
    for sid, (ts, values, lags) in group_rows(norm).items():  # type: ignore[arg-type]
        stored = stored_ts(conn, sid, min(ts))
        keep = [t not in stored for t in ts]
        ts = list(compress(ts, keep))
        if not ts:
            continue
        values = list(compress(values, keep))
        lag_list = list(compress(lags, keep))
        packed_lags = None if any(x is None for x in lag_list) else lag_list
        out += chunk_rows(sid, ts, values, packed_lags)  # type: ignore[arg-type]
        new += len(ts)
        conn.execute(
            f"UPDATE {SERIES} SET last_ts = max(coalesce(last_ts, ?1), ?1), "
            "first_ts = min(coalesce(first_ts, ?2), ?2) WHERE id = ?3",
            (max(ts), min(ts), sid),
        )
    write(conn, out)
    return new


def stored_ts(conn: sqlite3.Connection, sid: int, since: int) -> set[int]:
    """Timestamps >= `since` of the series' readings in the head."""
    out: set[int] = set()
    for (data,) in conn.execute(
        f"SELECT ts FROM {HEAD_CHUNKS} WHERE series_id = ? AND last_ts >= ?", (sid, since)
    ):
        out.update(decode_ts(data))
    return out


# -- reading ------------------------------------------------------------------------------


def _chunks_in(conn: sqlite3.Connection, lo: int, hi: int, columns: str) -> sqlite3.Cursor:
    """Chunks that may hold readings in [lo, hi): their windows start in [lo's window, hi)."""
    return conn.execute(
        f"SELECT {columns} FROM {HEAD_CHUNKS} WHERE window_start >= ? AND window_start < ? "
        "AND first_ts < ? AND last_ts >= ?",
        (_window(lo), hi, hi, lo),
    )


def _aligned(lo: int, hi: int) -> bool:
    """Whether [lo, hi) is whole chunk windows: its chunks are then exactly those whose
    window starts in it, every reading of them inside (chunk_rows cuts at chunk windows)."""
    return lo % CHUNK_NS == 0 and hi % CHUNK_NS == 0


def _by_window(columns: str, tail: str = "") -> str:
    return (
        f"SELECT {columns} FROM {HEAD_CHUNKS} WHERE window_start >= ? AND window_start < ?" + tail
    )


_FLOAT_KIND: Final = _FLOAT[0]
_INT_KIND: Final = _INT[0]


def _concat_values(vbs: list[bytes]) -> list[Value]:
    """The values of several chunks, in order: one array when they are all floats or all
    ints, else chunk by chunk."""
    kinds = {v[0] for v in vbs}
    if len(kinds) == 1 and (kind := kinds.pop()) in (_FLOAT_KIND, _INT_KIND):
        return decode_values(bytes((kind,)) + b"".join([v[1:] for v in vbs]))
    out: list[Value] = []
    for v in vbs:
        out += decode_values(v)
    return out


def read_window(conn: sqlite3.Connection, lo: int, hi: int) -> list[Row]:
    """The head readings with lo <= ts < hi as (series_id, ts, value), sorted by series
    then timestamp. Per series, its chunks' arrays are joined and unpacked at once."""
    aligned = _aligned(lo, hi)
    cols = "series_id, first_ts, last_ts, ts, vals"
    if aligned:
        chunks = conn.execute(_by_window(cols), (lo, hi)).fetchall()
    else:
        chunks = _chunks_in(conn, lo, hi, cols).fetchall()
    chunks.sort(key=_SID_FIRST)
    out: list[Row] = []
    for sid, group in groupby(chunks, key=_SID):
        mine = list(group)
        if len(mine) == 1:
            _, first, last, tsb, vb = mine[0]
            ts, values = decode_ts(tsb), decode_values(vb)
            ordered = True
        else:
            ts = decode_ts(b"".join(map(_TS, mine)))
            values = _concat_values(list(map(_VALS, mine)))
            firsts, lasts = list(map(_FIRST, mine)), list(map(_LAST, mine))
            # Chunks of one window from several writes may interleave.
            ordered = all(map(lt, lasts, firsts[1:]))
            first, last = firsts[0], max(lasts)
        if not aligned and (first < lo or last >= hi):
            keep = [lo <= t < hi for t in ts]
            ts, values = list(compress(ts, keep)), list(compress(values, keep))
        if not ordered:
            order = sorted(range(len(ts)), key=ts.__getitem__)
            ts = [ts[i] for i in order]
            values = [values[i] for i in order]
        out += zip(repeat(sid, len(ts)), ts, values, strict=True)
    return out


_SID: Final = itemgetter(0)
_SID_FIRST: Final = itemgetter(0, 1)
_FIRST: Final = itemgetter(1)
_LAST: Final = itemgetter(2)
_TS: Final = itemgetter(3)
_VALS: Final = itemgetter(4)


def count_range(conn: sqlite3.Connection, lo: int, hi: int) -> int:
    """How many head readings have lo <= ts < hi (only chunks cut by a bound are decoded)."""
    if _aligned(lo, hi):
        (n,) = conn.execute(_by_window("coalesce(sum(n), 0)"), (lo, hi)).fetchone()
        return int(n)
    n = 0
    for first, last, count, tsb in _chunks_in(conn, lo, hi, "first_ts, last_ts, n, ts"):
        if first >= lo and last < hi:
            n += count
        else:
            n += sum(1 for t in decode_ts(tsb) if lo <= t < hi)
    return int(n)


def nth_ts(conn: sqlite3.Connection, lo: int, hi: int, k: int) -> int | None:
    """The (k + 1)-th smallest head timestamp in [lo, hi) (k from 0), or None if fewer."""
    ts: list[int] = []
    for first, last, tsb in _chunks_in(conn, lo, hi, "first_ts, last_ts, ts"):
        cts = decode_ts(tsb)
        ts += cts if first >= lo and last < hi else [t for t in cts if lo <= t < hi]
    if len(ts) <= k:
        return None
    ts.sort()
    return ts[k]


def oldest_ts(conn: sqlite3.Connection, since: int, before: int) -> int | None:
    """The smallest head timestamp t with since <= t < before, or None."""
    w = _window(since)
    while w < before:
        row = conn.execute(
            f"SELECT min(window_start) FROM {HEAD_CHUNKS} WHERE window_start >= ?", (w,)
        ).fetchone()
        if row is None or row[0] is None or row[0] >= before:
            return None
        w = row[0]
        if w >= since:  # the usual case: one seek in the window index
            (first,) = conn.execute(
                f"SELECT min(first_ts) FROM {HEAD_CHUNKS} WHERE window_start = ?", (w,)
            ).fetchone()
            return int(first) if first < before else None
        best: int | None = None
        for first, tsb in conn.execute(
            f"SELECT first_ts, ts FROM {HEAD_CHUNKS} WHERE window_start = ?", (w,)
        ):
            if first >= since:
                cand = first
            else:
                later = [t for t in decode_ts(tsb) if t >= since]
                if not later:
                    continue
                cand = min(later)
            if best is None or cand < best:
                best = cand
        if best is not None:
            return best if best < before else None
        w += CHUNK_NS
    return None


def any_before(conn: sqlite3.Connection, before: int) -> bool:
    """Whether the head holds a reading with ts < before."""
    row = conn.execute(
        f"SELECT 1 FROM {HEAD_CHUNKS} WHERE window_start < ?1 AND first_ts < ?1 LIMIT 1",
        (before,),
    ).fetchone()
    return row is not None


def read_series(
    conn: sqlite3.Connection, ids: list[int], since: int, until: int | None
) -> dict[int, list[tuple[int, Value]]]:
    """Per series of `ids`, its head readings with since <= ts (< until), in ts order."""
    out: dict[int, list[tuple[int, Value]]] = {sid: [] for sid in ids}
    bound = "" if until is None else " AND first_ts < ?"
    for sid in ids:
        params: list[object] = [sid, since]
        if until is not None:
            params.append(until)
        got = out[sid]
        for first, last, tsb, vb in conn.execute(
            f"SELECT first_ts, last_ts, ts, vals FROM {HEAD_CHUNKS} "
            f"WHERE series_id = ? AND last_ts >= ?{bound}",
            params,
        ):
            pairs = zip(decode_ts(tsb), decode_values(vb), strict=True)
            if first >= since and (until is None or last < until):
                got += pairs
            else:
                got += (p for p in pairs if p[0] >= since and (until is None or p[0] < until))
        got.sort(key=itemgetter(0))
    return out


def read_all(conn: sqlite3.Connection) -> list[tuple[int, int, Value, int | None]]:
    """Every head reading as (series_id, ts, value, lag_ms), sorted by (ts, series_id): for
    tests, tools and the migration."""
    out: list[tuple[int, int, Value, int | None]] = []
    for sid, tsb, vb, lb in conn.execute(f"SELECT series_id, ts, vals, lags FROM {HEAD_CHUNKS}"):
        ts = decode_ts(tsb)
        lags: list[int | None] = decode_lags(lb, len(ts)) if lb is not None else [None] * len(ts)  # type: ignore[assignment]
        out += zip([sid] * len(ts), ts, decode_values(vb), lags, strict=True)
    out.sort(key=lambda r: (r[1], r[0]))
    return out


def totals(conn: sqlite3.Connection) -> tuple[int, int | None]:
    """(readings in the head, oldest timestamp or None)."""
    n, oldest = conn.execute(
        f"SELECT coalesce(sum(n), 0), min(first_ts) FROM {HEAD_CHUNKS}"
    ).fetchone()
    return int(n), None if oldest is None else int(oldest)


# -- deleting -----------------------------------------------------------------------------


def delete_range(
    conn: sqlite3.Connection, lo: int, hi: int, only: set[tuple[int, int]] | None = None
) -> int:
    """Delete the head readings with lo <= ts < hi (with `only`: those whose (series_id,
    ts) it holds); returns how many. Whole chunks go with one DELETE; a chunk holding
    readings that stay is rewritten with them."""
    if only is None and _aligned(lo, hi):
        deleted = conn.execute(
            f"DELETE FROM {HEAD_CHUNKS} WHERE window_start >= ? AND window_start < ? RETURNING n",
            (lo, hi),
        ).fetchall()
        return int(sum(map(_SID, deleted)))
    gone = 0
    drop: list[tuple[int]] = []
    rewrite: list[tuple[object, ...]] = []
    for cid, sid, first, last, n, tsb, vb, lb in _chunks_in(conn, lo, hi, _COLS):
        if only is None and first >= lo and last < hi:
            drop.append((cid,))
            gone += n
            continue
        ts, values = decode_ts(tsb), decode_values(vb)
        lags = decode_lags(lb, n) if lb is not None else None
        keep = [not (lo <= t < hi and (only is None or (sid, t) in only)) for t in ts]
        kept = sum(keep)
        if kept == n:
            continue
        gone += n - kept
        drop.append((cid,))
        if kept:
            rewrite += chunk_rows(
                sid,
                list(compress(ts, keep)),
                list(compress(values, keep)),
                None if lags is None else list(compress(lags, keep)),
            )
    if drop:
        conn.executemany(f"DELETE FROM {HEAD_CHUNKS} WHERE id = ?", drop)
    write(conn, rewrite)
    return gone


def delete_before(conn: sqlite3.Connection, cutoff: int, max_chunks: int) -> tuple[int, bool]:
    """Delete head readings with ts < cutoff from at most `max_chunks` chunks, oldest
    windows first; returns (readings deleted, whether more may remain)."""
    rows = conn.execute(
        f"SELECT {_COLS} FROM {HEAD_CHUNKS} WHERE window_start < ?1 AND first_ts < ?1 "
        "ORDER BY window_start LIMIT ?2",
        (cutoff, max_chunks),
    ).fetchall()
    gone = 0
    drop: list[tuple[int]] = []
    rewrite: list[tuple[object, ...]] = []
    for cid, sid, _first, last, n, tsb, vb, lb in rows:
        drop.append((cid,))
        if last < cutoff:
            gone += n
            continue
        ts, values = decode_ts(tsb), decode_values(vb)
        lags = decode_lags(lb, n) if lb is not None else None
        keep = [t >= cutoff for t in ts]
        gone += n - sum(keep)
        rewrite += chunk_rows(
            sid,
            list(compress(ts, keep)),
            list(compress(values, keep)),
            None if lags is None else list(compress(lags, keep)),
        )
    if drop:
        conn.executemany(f"DELETE FROM {HEAD_CHUNKS} WHERE id = ?", drop)
    write(conn, rewrite)
    return gone, len(rows) == max_chunks
