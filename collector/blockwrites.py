"""Writing blocks: the compactor's transactions and block rows, shared by its two levels
(collector.compactor: head windows into small blocks; collector.merging: hours of small
blocks into one block per series). No connection of its own, no scheduling.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

from collector import blocks as codec
from collector.store import BLOCKS, HORIZON


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
    # A connection may ask for its turn first (collector.maintainer: the writer pauses).
    turn = getattr(conn, "write_turn", None)
    with turn() if turn is not None else contextlib.nullcontext():
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
