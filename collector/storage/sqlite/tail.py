"""The live tail of a SQLite file: a cursor over readings committed after it was created.

Behind `SQLiteStorage.tail` (`telemetry tail`, the HTTP event stream, the demo). Reads only
through `collector.storage.sqlite.scan` and the `series` table, on read-only connections;
writes nothing.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Final

from collector.durations import NS_PER_S
from collector.storage.interface import Filters, Row, SeriesInfo
from collector.storage.rows import reading_row
from collector.storage.sqlite import scan, store
from collector.storage.sqlite.series import resolve_series


@dataclass(slots=True)
class Tail:
    """Cursor over readings committed after it was created.

    At creation it records, for every matching series, the newest timestamp stored
    (`series.last_ts`); a series created later starts from nothing. Each `poll` (one read
    transaction) resolves only series created since the last poll (series ids grow; a
    series' device, sensor, kind, unit and tags never change, so old ones cannot start or stop
    matching), reads the current `last_ts` of the matching ones, reads just those whose
    `last_ts` moved past their mark through `scan.read_range`, and advances the marks. A
    per-series mark (not one global (ts, series) watermark) keeps a device whose clock lags
    the others visible. Readings that arrive older than their series' newest stored reading
    (out-of-order within one series) are not shown.
    """

    filters: Filters
    marks: dict[int, int] = field(default_factory=dict)
    series: dict[int, SeriesInfo] = field(default_factory=dict)
    max_id: int = 0
    _data_version: int | None = None

    @classmethod
    def start(cls, conn: sqlite3.Connection, filters: Filters) -> Tail:
        """Snapshot the current end of every matching series."""
        t = cls(filters)
        conn.execute("BEGIN")
        try:
            t._data_version = _data_version(conn)
            t.max_id = _max_series_id(conn)
            for s in resolve_series(conn, filters):
                t.series[s.id] = s
                t.marks[s.id] = -1 if s.last_ts is None else s.last_ts
        finally:
            conn.execute("COMMIT")
        return t

    def rewind(self, ts_ns: int, series_id: int) -> None:
        """Follow from just after the reading keyed (ts_ns, series_id) instead of from now.

        Readings of every followed series that sort after that key (timestamp, then series
        id) are new, even those already stored; the next `poll` reads them. Used to resume an
        event stream from its Last-Event-ID.
        """
        for sid in self.series:
            self.marks[sid] = ts_ns if sid <= series_id else ts_ns - 1
        self._data_version = None  # read at the next poll even if nothing was committed since

    def poll(self, conn: sqlite3.Connection) -> list[Row]:
        """Readings committed since the last poll, ordered by (ts, series id)."""
        version = _data_version(conn)
        if version == self._data_version:
            return []
        conn.execute("BEGIN")
        try:
            self._data_version = _data_version(conn)
            top = _max_series_id(conn)
            if top > self.max_id:
                for s in resolve_series(conn, self.filters, after_id=self.max_id):
                    self.series[s.id] = s
                self.max_id = top
            if not self.series:
                return []
            moved: list[SeriesInfo] = []
            for sid, first, last, count in conn.execute(
                f"SELECT id, first_ts, last_ts, count FROM {store.SERIES} "
                "WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(list(self.series)),),
            ):
                if last is not None and last > self.marks.get(sid, -1):
                    s = self.series[sid]
                    s.first_ts, s.last_ts, s.count = first, last, count
                    moved.append(s)
            if not moved:
                return []
            rows: list[Row] = []
            for group, lo in self._groups(moved):
                hi = max(s.last_ts or 0 for s in group) + 1
                by_id = {s.id: s for s in group}
                rows += (
                    reading_row(by_id[sid], ts, value)
                    for sid, ts, value in scan.read_range(conn, list(by_id), lo, hi)
                    if ts > self.marks.get(sid, -1)
                )
            rows.sort(key=lambda r: (r["ts_ns"], r["series_id"]))
            for s in moved:
                self.marks[s.id] = s.last_ts or -1
            return rows
        finally:
            conn.execute("COMMIT")

    def _groups(self, moved: list[SeriesInfo]) -> list[tuple[list[SeriesInfo], int]]:
        """Series to read together, with the range start of each read.

        Series whose new readings start close together are read in one scan; one that was
        silent for long (its mark far back) is read alone, so it does not drag every other
        series' scan back to its old mark.
        """
        starts = {s.id: max(self.marks.get(s.id, -1) + 1, s.first_ts or 0) for s in moved}
        newest = max(starts.values())
        together = [s for s in moved if starts[s.id] >= newest - TAIL_GROUP_SPAN_NS]
        groups = [(together, min(starts[s.id] for s in together))]
        groups += [([s], starts[s.id]) for s in moved if starts[s.id] < newest - TAIL_GROUP_SPAN_NS]
        return groups


# Series whose unseen readings start within this span of each other are read in one scan.
TAIL_GROUP_SPAN_NS: Final = 60 * NS_PER_S


def _max_series_id(conn: sqlite3.Connection) -> int:
    return int(conn.execute(f"SELECT coalesce(max(id), 0) FROM {store.SERIES}").fetchone()[0])


def _data_version(conn: sqlite3.Connection) -> int:
    # Changes whenever another connection commits to the file: an idle poll costs one pragma.
    v = conn.execute("PRAGMA data_version").fetchone()[0]
    return int(v)
