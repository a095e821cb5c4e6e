"""Multi-row inserts: every row once, in statements of at most MAX_ROWS_PER_STATEMENT."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from collector.storage.sqlite import bulkinsert
from collector.storage.sqlite.bulkinsert import BulkInsert

INSERT = BulkInsert("INSERT OR IGNORE INTO t (k, v)", 2)


def _table(tmp_path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v)")
    return conn


@pytest.mark.parametrize("n", [0, 1, 2, 3, 511, 512, 513, 1_300])
def test_every_row_is_inserted_once_with_its_type(tmp_path: Path, n: int) -> None:
    conn = _table(tmp_path)
    rows = [(k, (k, float(k) + 0.5, str(k), None, b"x")[k % 5]) for k in range(n)]
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    assert INSERT(conn, rows) == n
    conn.set_trace_callback(None)
    assert conn.execute("SELECT k, v FROM t ORDER BY k").fetchall() == rows
    # n = 1,300: 512 + 512 + 256 + 16 + 4 rows: five statements, not 1,300.
    assert len(statements) == sum(map(int, f"{n % 512:b}")) + n // 512


def test_rows_already_there_are_not_counted(tmp_path: Path) -> None:
    conn = _table(tmp_path)
    INSERT(conn, [(1, "a"), (2, "b")])
    assert INSERT(conn, [(k, "new") for k in range(600)]) == 598
    assert conn.execute("SELECT v FROM t WHERE k IN (1, 2) ORDER BY k").fetchall() == [
        ("a",),
        ("b",),
    ]


def test_statements_fit_the_builds_variable_limit(tmp_path: Path) -> None:
    conn = _table(tmp_path)
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 7)  # three rows of two at most
    assert bulkinsert._rows_per_statement(conn, 2) == 2
    assert INSERT(conn, [(k, k) for k in range(9)]) == 9
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (9,)


def test_rows_of_the_wrong_width_are_refused(tmp_path: Path) -> None:
    conn = _table(tmp_path)
    with pytest.raises(ValueError, match="2 values"):
        INSERT(conn, [(1, "a"), (2,)])
    with pytest.raises(ValueError):
        BulkInsert("INSERT INTO t (k)", 0)
