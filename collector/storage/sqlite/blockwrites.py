"""Writing blocks: the compactor's transactions and block rows, shared by its two levels
(collector.storage.sqlite.compactor: head windows into small blocks;
collector.storage.sqlite.merging: hours of small blocks into one block per series), and the head's
rows made into blocks merged with the blocks already covering them. No connection of its own, no
scheduling.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from operator import itemgetter
from typing import TYPE_CHECKING, cast

from collector.storage.sqlite import blocks as codec
from collector.storage.sqlite.numeric_blocks import Float64s, Int64s
from collector.storage.sqlite.store import BLOCKS, HORIZON, write_turn

if TYPE_CHECKING:
    from collector.storage.sqlite.compaction_config import CompactionConfig


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """Own transaction (BEGIN IMMEDIATE), or a savepoint inside the caller's.

    If the connection has a `write_turn()` context manager, the transaction runs inside it.
    """
    if conn.in_transaction:
        conn.execute("SAVEPOINT compaction")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK TO compaction")
            conn.execute("RELEASE compaction")
            raise
        conn.execute("RELEASE compaction")
        return
    # A connection may ask for its turn first (collector.storage.sqlite.maintainer: the writer
    # pauses).
    with write_turn(conn):
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def block_row(
    sid: int,
    start: int,
    end: int,
    ts: list[int],
    values: list[codec.Value],
    *,
    plain: bool = False,
) -> tuple[object, ...]:
    s = codec.summarize(ts, values)
    data = codec.encode_plain(ts, values) if plain else codec.encode(ts, values)
    return (
        *(sid, start, end, s.count, s.first_ts, s.last_ts, s.first_value),
        *(s.last_value, s.min, s.max, s.sum, data),
    )


def column_block_row(
    sid: int, start: int, end: int, ts: Int64s, column: Int64s | Float64s
) -> tuple[object, ...]:
    """`block_row` for readings already in numpy columns (int64 timestamps; int64 ints or
    float64 floats): the same row."""
    s = codec.summarize(ts.tolist(), column.tolist())
    return (
        *(sid, start, end, s.count, s.first_ts, s.last_ts, s.first_value),
        *(s.last_value, s.min, s.max, s.sum, codec.encode_column(ts, column)),
    )


def insert_blocks(conn: sqlite3.Connection, rows: list[tuple[object, ...]]) -> None:
    """Insert (or replace) block rows as made by `block_row`, and raise the horizon the
    writer looks into blocks below (store.m0004) past their last readings."""
    if not rows:
        return
    conn.executemany(
        f"INSERT OR REPLACE INTO {BLOCKS} (series_id, start_ns, end_ns, count, first_ts, "
        "last_ts, first_value, last_value, min, max, sum, data) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    last = max(cast(int, row[5]) for row in rows)  # last_ts
    conn.execute(f"UPDATE {HORIZON} SET below_ns = max(below_ns, ?)", (last + 1,))


def merge_readings(
    block: tuple[list[int], list[codec.Value]], ts: list[int], values: list[codec.Value]
) -> tuple[list[int], list[codec.Value]]:
    """Block readings plus head readings at timestamps the block lacks (the block wins)."""
    bts, bvalues = block
    if ts[0] > bts[-1]:
        return bts + ts, bvalues + values
    merged = dict(zip(ts, values, strict=True))
    merged.update(zip(bts, bvalues, strict=True))
    order = sorted(merged)
    return order, [merged[t] for t in order]


def write_head_blocks(
    conn: sqlite3.Connection,
    start: int,
    end: int,
    rows: list[tuple[int, int, codec.Value]],
    config: CompactionConfig,
) -> None:
    """Blocks for head rows (sorted by series_id, ts) of [start, end), merged into the blocks
    covering them."""
    existing = covering_blocks(conn, start, rows, config)
    insert_blocks(conn, head_block_rows(start, end, rows, config.merge_ns, existing))


Covering = dict[int, tuple[int, int, int, bytes]]


def covering_blocks(
    conn: sqlite3.Connection,
    start: int,
    rows: list[tuple[int, int, codec.Value]],
    config: CompactionConfig,
) -> Covering:
    """Per series of `rows` (sorted by series), the block already covering the window at
    `start`, as (id, start, end, data): its own small block, its slot's block (compactor._run_end)
    or, once merged, the merge window's block. A series' blocks never overlap (the
    writer's duplicate check and collector.storage.sqlite.scan find at most one block per reading),
    so late readings go into it."""
    if not rows:
        return {}
    m = config.merge_ns
    starts = (start, start - start % config.run_ns, start - start % m if m else start)
    return {
        sid: (bid, bstart, bend, data)
        for bid, sid, bstart, bend, data in conn.execute(
            f"SELECT id, series_id, start_ns, end_ns, data FROM {BLOCKS} "
            "WHERE start_ns IN (?, ?, ?) AND series_id >= ? AND series_id <= ? AND end_ns > ?",
            (*starts, rows[0][0], rows[-1][0], start),
        )
    }


def series_runs(
    rows: list[tuple[int, int, codec.Value]],
) -> Iterator[tuple[int, list[int], list[codec.Value]]]:
    """(series_id, timestamps, values) per series of `rows` (sorted by series_id, each
    series' rows in ts order), in row order."""
    if not rows:
        return
    # Cut the columns into per-series runs without a Python step per row (map, Counter and
    # slicing run in C; zip(*rows) would make an iterator object per row: 2x slower).
    sids, tss, vals = (list(map(itemgetter(i), rows)) for i in range(3))
    pos = 0
    for sid, count in Counter(sids).items():  # in row order: by series_id
        yield sid, tss[pos : pos + count], vals[pos : pos + count]
        pos += count


def head_block_rows(
    start: int,
    end: int,
    rows: list[tuple[int, int, codec.Value]],
    merge_ns: int,
    existing: Covering,
) -> list[tuple[object, ...]]:
    """The block rows for `rows` (sorted by series_id, ts), merged into `existing`."""
    out = []
    for sid, ts, values in series_runs(rows):
        bstart, bend = start, end
        old = existing.get(sid)
        if old is not None:
            bstart, bend = old[1], old[2]
            ts, values = merge_readings(codec.decode(old[3]), ts, values)
        # Small blocks are written in the cheap plain form: they live until the merge.
        plain = bool(merge_ns) and bend - bstart < merge_ns
        out.append(block_row(sid, bstart, bend, ts, values, plain=plain))
    return out
