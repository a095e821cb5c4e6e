"""The tail cursor over PostgreSQL: readings committed after it was opened.

Per-series marks, as the SQLite tail (collector.query.tail): at the start each matching
series' mark is its newest stored timestamp; each poll (one REPEATABLE READ snapshot) picks
up series created since, reads the `latest` table for the followed series, and reads the
readings of those whose newest moved past their mark, up to that newest, in one query. A
reading older than its series' newest when it arrives is not shown. Read-only.
"""

from __future__ import annotations

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool

from collector.storage.interface import Filters, Row, SeriesInfo, Value
from collector.storage.postgres import reads
from collector.storage.postgres.reads import value_of
from collector.storage.postgres.schema import READINGS, Conn
from collector.storage.rows import reading_row


class PostgresTail:
    """Readings committed after the cursor was opened (the interface's `TailCursor`)."""

    def __init__(
        self, pool: ConnectionPool[psycopg.Connection[TupleRow]], filters: Filters
    ) -> None:
        self._pool = pool
        self.filters = filters
        self.series: dict[int, SeriesInfo] = {}
        self.marks: dict[int, int] = {}
        with pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            self.max_id = reads.max_series_id(conn)
            for s in reads.resolve_series(conn, filters):
                self.series[s.id] = s
                self.marks[s.id] = -1 if s.last_ts is None else s.last_ts

    def poll(self) -> list[Row]:
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            top = reads.max_series_id(conn)
            if top > self.max_id:
                for s in reads.resolve_series(conn, self.filters, after_id=self.max_id):
                    self.series[s.id] = s
                    self.marks.setdefault(s.id, -1)
                self.max_id = top
            if not self.series:
                return []
            moved = {
                sid: (self.marks[sid], ts)
                for sid, ts, _ in reads.latest(conn, list(self.series))
                if ts > self.marks[sid]
            }
            if not moved:
                return []
            rows = readings_after(conn, moved)
        for sid, (_, upto) in moved.items():
            self.marks[sid] = upto
        return [reading_row(self.series[sid], ts, v) for sid, ts, v in rows]

    def rewind(self, ts_ns: int, series_id: int) -> None:
        """Follow from just after the reading keyed (ts_ns, series_id): a reading (t, s)
        sorts after it when t > ts_ns, or t == ts_ns and s > series_id."""
        for sid in self.series:
            self.marks[sid] = ts_ns - 1 if sid > series_id else ts_ns

    def close(self) -> None:
        self.series.clear()


def readings_after(conn: Conn, marks: dict[int, tuple[int, int]]) -> list[tuple[int, int, Value]]:
    """Readings of each series in `marks` with mark < ts <= upto ({id: (mark, upto)}), by
    (ts, series id)."""
    ids = sorted(marks)
    query = (
        f"SELECT r.series_id, r.ts, r.i, r.f, r.t, r.b FROM {READINGS} AS r "
        "JOIN unnest(%s::integer[], %s::bigint[], %s::bigint[]) AS m(sid, lo, hi) "
        "ON r.series_id = m.sid AND r.ts > m.lo AND r.ts <= m.hi ORDER BY r.ts, r.series_id"
    )
    params = (ids, [marks[i][0] for i in ids], [marks[i][1] for i in ids])
    return [(sid, ts, value_of(i, f, t, b)) for sid, ts, i, f, t, b in conn.execute(query, params)]
