"""Many rows in few statements: `INSERT ... VALUES (...), (...), ...` in chunks.

Why: sqlite3's `executemany` releases and takes back the GIL around every row's
`sqlite3_step`. The writer thread shares the GIL with the event loop thread, which decodes
and validates batches, and every handoff can wait for it: 496-row batches into the head
ran at 117k rows/s with a busy Python thread beside them against 175k alone; one statement
per up to 512 rows ran at ~205k rows/s either way (`bench/bench_insert_gil.py`).

Chunks are powers of two up to `MAX_ROWS_PER_STATEMENT` (fewer if the SQLite build allows
fewer variables), so a connection prepares at most ten statement texts per table and its
statement cache keeps them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from itertools import chain
from typing import Final

MAX_ROWS_PER_STATEMENT: Final = 512


class BulkInsert:
    """`insert(conn, rows)` runs `head` + `VALUES (?, ...), ...` for `rows` of `width`
    values each; returns the rows inserted (`changes`: INSERT OR IGNORE skips count 0)."""

    def __init__(self, head: str, width: int) -> None:
        if width < 1:
            raise ValueError("width must be >= 1")
        self.head = head
        self.width = width
        self._texts: dict[int, str] = {}
        self._group = "(" + ", ".join("?" * width) + ")"

    @property
    def one_row(self) -> str:
        """The statement for a single row (to learn row by row which ones are new)."""
        return self._text(1)

    def __call__(self, conn: sqlite3.Connection, rows: Sequence[Sequence[object]]) -> int:
        most = _rows_per_statement(conn, self.width)
        done = inserted = 0
        while done < len(rows):
            left = len(rows) - done
            size = most if left >= most else 1 << (left.bit_length() - 1)
            chunk = rows[done : done + size]
            values = list(chain.from_iterable(chunk))
            if len(values) != size * self.width:
                raise ValueError(f"every row needs {self.width} values")
            inserted += conn.execute(self._text(size), values).rowcount
            done += size
        return inserted

    def _text(self, size: int) -> str:
        text = self._texts.get(size)
        if text is None:
            text = self._texts[size] = f"{self.head} VALUES {', '.join([self._group] * size)}"
        return text


def _rows_per_statement(conn: sqlite3.Connection, width: int) -> int:
    """The largest power of two <= MAX_ROWS_PER_STATEMENT this build binds in one go."""
    fits = max(
        1, min(MAX_ROWS_PER_STATEMENT, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width)
    )
    return 1 << (fits.bit_length() - 1)
