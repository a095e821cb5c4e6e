"""The read API over stored readings: ranges, bucketed aggregates and latest values.

Every query sees each reading exactly once, whether it sits in the time-ordered head
(`readings_head`) or in a compacted block (`blocks`): each query runs in one read
transaction (one WAL snapshot), so a compaction committing meanwhile cannot make a reading
appear twice or vanish. A reading present in both places (a resend or late reading stored
in the head after its window was compacted, before the compactor merged it) is answered
from the block, as a plain table with INSERT OR IGNORE would have kept the first value.

Aggregates use a block's stored summary (count/min/max/sum/first/last) without decoding it
when the block lies wholly inside one bucket and inside the range, and no head reading of
the same series falls within it. Aggregates other than `count` consider numeric values
only (int and float; bools are stored as 0/1); `count` counts every reading.

Read-only: this module never writes. Callers pass their own (read-only) connection.
"""

from __future__ import annotations

import heapq
import json
import sqlite3
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from typing import Final, Literal, NamedTuple, TypeAlias

from collector.storage.sqlite import blocks as codec
from collector.storage.sqlite.store import BLOCKS, HEAD, SERIES

Value: TypeAlias = int | float | str | None
Order = Literal["asc", "desc"]
Agg = Literal["avg", "min", "max", "sum", "count", "first", "last"]
AGGREGATES: Final = ("avg", "min", "max", "sum", "count", "first", "last")

_MIN_TS: Final = -(2**63)
_MAX_TS: Final = 2**63 - 1
# Up to this many series ids go into the SQL text as literals (SQLite builds a small
# lookup for IN lists); more go through one json_each parameter.
_LITERAL_IDS_MAX: Final = 100


class _Block(NamedTuple):
    start_ns: int
    first_ts: int
    last_ts: int
    n: int
    first_value: Value
    last_value: Value
    min: int | float | None
    max: int | float | None
    sum: int | float | None
    data: bytes


@contextmanager
def _snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """One read transaction around several SELECTs (reuses the caller's if open)."""
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")


def _ids(series_ids: Sequence[int]) -> list[int]:
    return sorted({int(s) for s in series_ids})


def _fetch_head(
    conn: sqlite3.Connection, ids: list[int], since: int, until: int | None
) -> dict[int, list[tuple[int, Value]]]:
    # The head is keyed (ts, series_id): a range walks every series' rows in it, so the
    # per-row series test must be cheap. A literal list of ints (ids are ints: `_ids` made
    # them so) measured ~30% faster than IN over json_each; large sets still use json_each.
    if len(ids) == 1:
        series_test = f"series_id = {ids[0]}"
    elif len(ids) <= _LITERAL_IDS_MAX:
        series_test = f"series_id IN ({','.join(map(str, ids))})"
    else:
        series_test = "series_id IN (SELECT value FROM json_each(?))"
    sql = (
        f"SELECT series_id, ts, value FROM {HEAD} WHERE ts >= ?"
        + (" AND ts < ?" if until is not None else "")
        + f" AND {series_test} ORDER BY ts"
    )
    params: list[object] = [since]
    if until is not None:
        params.append(until)
    if len(ids) > _LITERAL_IDS_MAX:
        params.append(json.dumps(ids))
    out: dict[int, list[tuple[int, Value]]] = {sid: [] for sid in ids}
    for sid, ts, value in conn.execute(sql, params):
        out[sid].append((ts, value))
    return out


def _fetch_blocks(
    conn: sqlite3.Connection, sid: int, since: int, until: int | None
) -> list[_Block]:
    # A block starts at most MAX_WINDOW_NS before any reading it holds.
    lo = max(_MIN_TS, since - codec.MAX_WINDOW_NS)
    sql = (
        "SELECT start_ns, first_ts, last_ts, count, first_value, last_value, min, max, sum, "
        f"data FROM {BLOCKS} WHERE series_id = ? AND start_ns > ? AND last_ts >= ?"
        + (" AND start_ns < ? AND first_ts < ?" if until is not None else "")
        + " ORDER BY start_ns"
    )
    params: list[object] = [sid, lo, since]
    if until is not None:
        params += [until, until]
    return [_Block(*row) for row in conn.execute(sql, params)]


def _block_items(
    block: _Block, since: int, until: int | None, desc: bool
) -> Iterator[tuple[int, int, Value]]:
    ts, values = codec.decode(block.data)
    lo = bisect_left(ts, since)
    hi = len(ts) if until is None else bisect_left(ts, until)
    idx = range(hi - 1, lo - 1, -1) if desc else range(lo, hi)
    for i in idx:
        yield ts[i], 0, values[i]


def _series_stream(
    sid: int,
    blocks: list[_Block],
    head: list[tuple[int, Value]],
    since: int,
    until: int | None,
    desc: bool,
) -> Iterator[tuple[int, int, Value]]:
    """One series' readings in order, block readings first on equal timestamps."""
    ordered = reversed(blocks) if desc else iter(blocks)
    from_blocks = (item for b in ordered for item in _block_items(b, since, until, desc))
    rows = reversed(head) if desc else iter(head)
    from_head = ((ts, 1, v) for ts, v in rows)
    if desc:
        merged = heapq.merge(from_blocks, from_head, key=lambda x: (x[0], -x[1]), reverse=True)
    else:
        merged = heapq.merge(from_blocks, from_head, key=lambda x: (x[0], x[1]))
    prev: int | None = None
    for ts, _src, value in merged:
        if ts == prev:
            continue  # a head copy of a block reading: the block's (first stored) value wins
        prev = ts
        yield sid, ts, value


def read_range(
    conn: sqlite3.Connection,
    series_ids: Sequence[int],
    since_ns: int | None,
    until_ns: int | None,
    *,
    order: Order = "asc",
    limit: int | None = None,
) -> Iterator[tuple[int, int, Value]]:
    """(series_id, ts_ns, value) in [since, until), ordered by (ts, series_id), each once.

    Raises ValueError for an unknown order or a negative limit.
    """
    if order not in ("asc", "desc"):
        raise ValueError(f"order must be 'asc' or 'desc', not {order!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, not {limit}")
    ids = _ids(series_ids)
    since = _MIN_TS if since_ns is None else since_ns
    desc = order == "desc"
    if not ids or limit == 0 or (until_ns is not None and until_ns <= since):
        return iter(())
    with _snapshot(conn):
        head = _fetch_head(conn, ids, since, until_ns)
        per_series = {sid: _fetch_blocks(conn, sid, since, until_ns) for sid in ids}
    streams = [
        _series_stream(sid, per_series[sid], head[sid], since, until_ns, desc) for sid in ids
    ]
    merged = heapq.merge(*streams, key=lambda r: (r[1], r[0]), reverse=desc)
    return islice(merged, limit) if limit is not None else merged


@dataclass(slots=True)
class _Acc:
    """One bucket's running aggregate."""

    count: int = 0
    ncount: int = 0
    sum: int | float = 0
    min: int | float | None = None
    max: int | float | None = None
    first_ts: int = _MAX_TS
    first: int | float | None = None
    last_ts: int = _MIN_TS
    last: int | float | None = None

    def add(self, ts: int, value: Value) -> None:
        self.count += 1
        if type(value) is not int and type(value) is not float:
            return
        self.ncount += 1
        self.sum += value
        if self.min is None or value < self.min:
            self.min = value
        if self.max is None or value > self.max:
            self.max = value
        if ts < self.first_ts:
            self.first_ts, self.first = ts, value
        if ts > self.last_ts:
            self.last_ts, self.last = ts, value

    def add_run(self, ts: list[int], values: list[Value]) -> None:
        """Add readings sorted by time; all-numeric runs never loop in Python."""
        if not set(map(type, values)) <= {int, float}:
            for t, v in zip(ts, values, strict=True):
                self.add(t, v)
            return
        nums: list[int | float] = values  # type: ignore[assignment]  # checked just above
        self.count += len(nums)
        self.ncount += len(nums)
        self.sum += sum(nums)
        lo, hi = min(nums), max(nums)
        if self.min is None or lo < self.min:
            self.min = lo
        if self.max is None or hi > self.max:
            self.max = hi
        if ts[0] < self.first_ts:
            self.first_ts, self.first = ts[0], nums[0]
        if ts[-1] > self.last_ts:
            self.last_ts, self.last = ts[-1], nums[-1]

    def add_block(self, b: _Block) -> None:
        # Only numeric blocks (sum not NULL) come here: every value counts as numeric.
        assert b.sum is not None and b.min is not None and b.max is not None
        self.count += b.n
        self.ncount += b.n
        self.sum += b.sum
        if self.min is None or b.min < self.min:
            self.min = b.min
        if self.max is None or b.max > self.max:
            self.max = b.max
        if b.first_ts < self.first_ts:
            self.first_ts, self.first = b.first_ts, _num(b.first_value)
        if b.last_ts > self.last_ts:
            self.last_ts, self.last = b.last_ts, _num(b.last_value)

    def result(self, agg: Agg) -> float | int | None:
        if agg == "count":
            return self.count
        if self.ncount == 0:
            return None
        if agg == "avg":
            return self.sum / self.ncount
        if agg == "sum":
            return self.sum
        if agg == "min":
            return self.min
        if agg == "max":
            return self.max
        if agg == "first":
            return self.first
        return self.last


def _num(v: Value) -> int | float | None:
    return v if type(v) is int or type(v) is float else None


def _aggregate_series(
    blocks: list[_Block],
    head: list[tuple[int, Value]],
    since: int,
    until: int | None,
    every: int,
) -> dict[int, _Acc]:
    accs: dict[int, _Acc] = {}
    head_ts = [ts for ts, _ in head]
    dropped: set[int] = set()  # head timestamps already present in a decoded block
    for b in blocks:
        lo, hi = bisect_left(head_ts, b.first_ts), bisect_right(head_ts, b.last_ts)
        whole = (
            b.sum is not None
            and b.first_ts >= since
            and (until is None or b.last_ts < until)
            and b.first_ts // every == b.last_ts // every
            and lo == hi
        )
        if whole:
            bucket = b.first_ts - b.first_ts % every
            accs.setdefault(bucket, _Acc()).add_block(b)
            continue
        ts_list, values = codec.decode(b.data)
        i = bisect_left(ts_list, since)
        j = len(ts_list) if until is None else bisect_left(ts_list, until)
        _add_sorted(accs, ts_list[i:j], values[i:j], every)
        if lo < hi:
            dropped.update(set(head_ts[lo:hi]).intersection(ts_list))
    if dropped:
        head = [(ts, v) for ts, v in head if ts not in dropped]
    if head:
        hts, hvalues = zip(*head, strict=True)
        _add_sorted(accs, list(hts), list(hvalues), every)
    return accs


def _add_sorted(accs: dict[int, _Acc], ts: list[int], values: list[Value], every: int) -> None:
    """Add readings sorted by time, a bucket's run at a time (min/max/sum run in C)."""
    i, n = 0, len(ts)
    while i < n:
        bucket = ts[i] - ts[i] % every
        j = bisect_left(ts, bucket + every, i, n)
        acc = accs.get(bucket)
        if acc is None:
            accs[bucket] = acc = _Acc()
        acc.add_run(ts[i:j], values[i:j])
        i = j


def aggregate(
    conn: sqlite3.Connection,
    series_ids: Sequence[int],
    since_ns: int | None,
    until_ns: int | None,
    every_ns: int,
    agg: Agg,
) -> Iterator[tuple[int, int, float | int | None]]:
    """(series_id, bucket_start_ns, value) for each non-empty bucket, by series then bucket.

    Buckets are [k * every_ns, (k + 1) * every_ns). Raises ValueError for a non-positive
    every_ns or an unknown aggregate.
    """
    if every_ns <= 0:
        raise ValueError(f"every_ns must be positive, not {every_ns}")
    if agg not in AGGREGATES:
        raise ValueError(f"unknown aggregate {agg!r}; expected one of {', '.join(AGGREGATES)}")
    ids = _ids(series_ids)
    since = _MIN_TS if since_ns is None else since_ns
    if not ids or (until_ns is not None and until_ns <= since):
        return iter(())
    with _snapshot(conn):
        head = _fetch_head(conn, ids, since, until_ns)
        per_series = {sid: _fetch_blocks(conn, sid, since, until_ns) for sid in ids}
    return _aggregate_rows(ids, per_series, head, since, until_ns, every_ns, agg)


def _aggregate_rows(
    ids: list[int],
    per_series: dict[int, list[_Block]],
    head: dict[int, list[tuple[int, Value]]],
    since: int,
    until: int | None,
    every: int,
    agg: Agg,
) -> Iterator[tuple[int, int, float | int | None]]:
    for sid in ids:
        accs = _aggregate_series(per_series[sid], head[sid], since, until, every)
        for bucket in sorted(accs):
            yield sid, bucket, accs[bucket].result(agg)


def latest(
    conn: sqlite3.Connection, series_ids: Sequence[int] | None = None
) -> list[tuple[int, int, Value]]:
    """(series_id, last_ts, last_value) per series that has readings, by series id.

    Answered from the series table the writer keeps current; never scans readings.
    """
    sql = f"SELECT id, last_ts, last_value FROM {SERIES} WHERE last_ts IS NOT NULL"
    params: list[object] = []
    if series_ids is not None:
        sql += " AND id IN (SELECT value FROM json_each(?))"
        params.append(json.dumps(_ids(series_ids)))
    return [(sid, ts, value) for sid, ts, value in conn.execute(sql + " ORDER BY id", params)]


def held_in_blocks(conn: sqlite3.Connection, rows: Sequence[tuple[int, int, int]]) -> set[int]:
    """Keys of the (key, series_id, ts) rows whose reading a compacted block already holds.

    The head's INSERT OR IGNORE cannot see blocks: a writer checks late or resent readings
    here first. One query per series (`_fetch_blocks`), for the blocks overlapping that
    series' rows.
    """
    spans: dict[int, list[int]] = {}
    for _, sid, ts in rows:
        span = spans.get(sid)
        if span is None:
            spans[sid] = [ts, ts]
        elif ts < span[0]:
            span[0] = ts
        elif ts > span[1]:
            span[1] = ts
    stored: dict[int, set[int]] = {}
    for sid, (lo, hi) in spans.items():
        members: set[int] = set()
        for block in _fetch_blocks(conn, sid, lo, hi + 1):
            members.update(codec.decode(block.data)[0])
        stored[sid] = members
    return {key for key, sid, ts in rows if ts in stored[sid]}
