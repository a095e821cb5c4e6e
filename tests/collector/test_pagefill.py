"""Block rows in page-filling order (collector.storage.sqlite.pagefill) against a real file:
the cell sizes are SQLite's, and appending in that order leaves pages full where series
order leaves them part empty."""

from __future__ import annotations

import math
import random
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from collector.storage.sqlite import pagefill, store

S = 10**9
T0 = 1_767_225_600 * S
INSERT = (
    "INSERT INTO blocks (id, series_id, start_ns, end_ns, count, first_ts, last_ts, "
    "first_value, last_value, min, max, sum, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Rowids from 2**21 on take 4 bytes as varints, as pagefill assumes.
FIRST_ID = 2**21


def block(rng: random.Random, sid: int, size: int, *, floats: bool = True) -> tuple[object, ...]:
    if floats:
        summary: tuple[object, ...] = (21.5, 22.25, 20.0, 23.5, 7_740.0)
    else:
        summary = (3, 300, 0, 1, rng.randrange(10**9))
    return (
        *(sid, T0, T0 + 3600 * S, rng.randrange(1, 400), T0 + rng.randrange(S), T0 + 3599 * S),
        *summary,
        rng.randbytes(size),
    )


def load_like(rng: random.Random, devices: int) -> list[tuple[object, ...]]:
    """Hour blocks shaped like bench/load.py's sensors, in series order: seven of 40-260
    bytes of data, then one of ~2.5 KB (a full-precision series)."""
    rows = []
    for d in range(devices):
        for i, size in enumerate((182, 157, 130, 256, 210, 78, 182, 2_500)):
            rows.append(block(rng, 8 * d + i + 1, size + rng.randrange(-3, 4), floats=i != 4))
    return rows


def bare_table(tmp_path: Path, name: str, page_size: int) -> sqlite3.Connection:
    """The blocks table's columns (the same records) in a file of `page_size` with no
    index: its page count moves with the table's pages only."""
    conn = sqlite3.connect(tmp_path / name, isolation_level=None)
    conn.execute(f"PRAGMA page_size = {page_size}")
    conn.execute(
        "CREATE TABLE blocks (id INTEGER PRIMARY KEY, series_id INTEGER NOT NULL, "
        "start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL, count INTEGER NOT NULL, "
        "first_ts INTEGER NOT NULL, last_ts INTEGER NOT NULL, first_value, last_value, min, "
        "max, sum, data BLOB NOT NULL)"
    )
    return conn


def insert_all(conn: sqlite3.Connection, rows: list[tuple[object, ...]]) -> int:
    """Append `rows` (ids in the given order); returns the pages they added."""
    before = int(conn.execute("PRAGMA page_count").fetchone()[0])
    conn.execute("BEGIN")
    conn.executemany(INSERT, [(FIRST_ID + k, *row) for k, row in enumerate(rows)])
    conn.execute("COMMIT")
    return int(conn.execute("PRAGMA page_count").fetchone()[0]) - before


def test_cell_bytes_are_sqlite_cell_sizes(tmp_path: Path) -> None:
    rng = random.Random(5)
    store.migrate(tmp_path / "cells.db")  # the real table, with its indexes
    conn = store.connect(tmp_path / "cells.db")
    try:
        conn.execute("SELECT count(*) FROM dbstat").fetchone()
    except sqlite3.OperationalError:
        pytest.skip("this SQLite has no dbstat virtual table")
    rows = load_like(rng, 20)
    # Integers of every width, NULL summaries, a text value, and data over the page's local
    # limit (an overflow chain), a little under it and exactly at it.
    widths = [0, 1, -1, 127, -129, 2**15, 2**23 + 1, -(2**31), 2**40, 2**47, -(2**62)]
    for k, v in enumerate(widths):
        rows.append((1000 + k, T0, T0 + S, v, T0, T0, v, v, None, None, None, b"x" * k))
    rows.append((2000, T0, T0 + S, 1, T0, T0, "text é", "t", None, None, None, b"y" * 10))
    for size in (5_000, 4_000, 4_022, 4_023, 9_000, 40_000):
        rows.append(block(rng, 3000 + size, size))
    conn.execute("BEGIN")
    conn.executemany(INSERT, [(FIRST_ID + k, *row) for k, row in enumerate(rows)])
    conn.execute("COMMIT")
    (used,) = conn.execute(
        "SELECT sum(pgsize - unused - 8) FROM dbstat WHERE name = 'blocks' AND pagetype = 'leaf'"
    ).fetchone()
    assert used == sum(pagefill.cell_bytes(row, 4096) for row in rows)
    per_row = [pagefill.record_bytes(row) for row in rows]
    (payload,) = conn.execute("SELECT sum(length(data)) FROM blocks").fetchone()
    assert sum(per_row) > payload


@pytest.mark.parametrize("page_size", [4096, 8192])
def test_page_order_fills_pages(tmp_path: Path, page_size: int) -> None:
    rng = random.Random(11)
    rows = load_like(rng, 300)
    ordered = pagefill.page_order(rows, page_size)
    assert Counter(map(id, ordered)) == Counter(map(id, rows))  # the same rows, once each
    series_pages = insert_all(bare_table(tmp_path, "series.db", page_size), rows)
    packed_pages = insert_all(bare_table(tmp_path, "packed.db", page_size), ordered)
    cells = sum(pagefill.cell_bytes(row, page_size) for row in rows)
    # At least this many leaves, plus the same few interior pages in both files.
    floor = math.ceil(cells / (page_size - 8))
    extra = series_pages - floor
    assert series_pages > packed_pages
    assert packed_pages - floor < extra / 3, (series_pages, packed_pages, floor)


def test_page_order_keeps_small_batches() -> None:
    assert pagefill.page_order([], 4096) == []
    one = [(1, T0, T0, 1, T0, T0, 1.0, 1.0, 1.0, 1.0, 1.0, b"z")]
    assert pagefill.page_order(one, 4096) == one


def test_page_order_puts_each_groups_largest_first() -> None:
    rng = random.Random(3)
    rows = load_like(rng, 40)
    ordered = pagefill.page_order(rows, 4096)
    sizes = [pagefill.cell_bytes(row, 4096) for row in ordered]
    # Group after group: a big row, then small ones adding up to at most a page.
    starts = [k for k, size in enumerate(sizes) if size > 2_000]
    assert starts[0] == 0 and len(starts) == 40
    for a, b in zip(starts, [*starts[1:], len(sizes)], strict=True):
        assert sum(sizes[a:b]) <= 4096 - 8 or b == len(sizes)
