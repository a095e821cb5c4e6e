"""Series resolution and the dead-letter listing over the `series`, `devices` and `rejected`
tables (the SQL behind `SQLiteStorage.resolve_series` and `SQLiteStorage.rejected`). Reads only.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence

from collector.storage.interface import Filters, RejectedFilter, Row, SeriesInfo
from collector.storage.rows import rejected_query, rejected_row, value_type
from collector.storage.sqlite import store
from collector.storage.sqlite.dialect import DIALECT


def series_where(f: Filters) -> tuple[str, list[object]]:
    """Filters -> (SQL condition over `s` = series and `d` = devices, parameters)."""
    clauses: list[str] = []
    params: list[object] = []

    def any_of(expr: str, values: Sequence[str]) -> None:
        if values:
            clauses.append("(" + " OR ".join(expr for _ in values) + ")")
            params.extend(values)

    any_of("d.name GLOB ?", f.devices)
    any_of("s.sensor GLOB ?", f.sensors)
    any_of("s.kind = ?", f.kinds)
    any_of("s.field = ?", f.fields)
    for key, value in f.tags:
        clauses.append(
            "EXISTS (SELECT 1 FROM json_each(s.tags) AS t WHERE t.key = ? AND t.value = ?)"
        )
        params.extend((key, value))
    return (" AND ".join(clauses) or "1"), params


def resolve_series(conn: sqlite3.Connection, f: Filters, *, after_id: int = 0) -> list[SeriesInfo]:
    """Series matching the filters (and with id > `after_id`), by device, sensor, field, id."""
    where, params = series_where(f)
    if after_id:
        where += " AND s.id > ?"
        params.append(after_id)
    sql = (
        "SELECT s.id, d.name, s.sensor, s.field, s.kind, s.unit, s.tags, s.first_ts, "
        f"s.last_ts, s.last_value, s.count FROM {store.SERIES} AS s "
        f"JOIN {store.DEVICES} AS d ON d.id = s.device_id WHERE {where} "
        "ORDER BY d.name, s.sensor, s.field, s.id"
    )
    tags: dict[str, dict[str, str]] = {}  # most series share a few tag sets: parse each once
    out: list[SeriesInfo] = []
    for sid, dev, sensor, fld, kind, unit, tag_json, first, last, last_value, count in conn.execute(
        sql, params
    ):
        t = tags.get(tag_json)
        if t is None:
            t = tags[tag_json] = json.loads(tag_json)
        info = SeriesInfo(sid, dev, sensor, fld, kind, unit, t, first, last, last_value, count)
        info.vtype = value_type(kind, fld)
        out.append(info)
    return out


def list_rejected(conn: sqlite3.Connection, which: RejectedFilter) -> Iterator[Row]:
    """The dead letters `which` selects, by (receive time, id); streamed."""
    sql, params = rejected_query(DIALECT, series_where(Filters(devices=which.devices)), which)
    for rid, received, dev, seq, idx, code, path, msg, reading, replayed in conn.execute(
        sql, params
    ):
        yield rejected_row(rid, received, dev, seq, idx, code, path, msg, reading, replayed)
