"""The read path over PostgreSQL: series, ranges, bucketed aggregates, latest, dead letters.

Each function takes a connection from the backend's pool (autocommit off is not assumed: a
function that needs one snapshot for several statements opens a REPEATABLE READ
transaction). Ranges stream through a server-side cursor, so memory does not grow with the
range; aggregates are computed by PostgreSQL (integer arithmetic on ns: buckets at epoch
multiples of `every_ns`, exactly as the SQLite backend's). Globs keep SQLite GLOB syntax
(`*`, `?`, `[...]`, `[^...]`), translated into anchored regular expressions.

Read-only: this module never writes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Final

from psycopg import sql

from collector.storage.interface import Agg, Filters, Order, RejectedFilter, Row, SeriesInfo, Value
from collector.storage.postgres.schema import DEVICES, DIALECT, LATEST, READINGS, SERIES, Conn
from collector.storage.rows import rejected_query, rejected_row, value_type

AGGREGATES: Final = ("avg", "min", "max", "sum", "count", "first", "last")
# Rows fetched per round trip from a server-side cursor.
FETCH_ROWS: Final = 5_000
# Sort memory of a range or aggregate query (SET LOCAL: that transaction only). PostgreSQL's
# default 4 MB sent 24 h of 1,000 series (1M readings) to disk sorts: 4.6 s, against 2.0 s
# with this and a sort-based GROUP BY (bench/bench_postgres.py).
QUERY_WORK_MEM: Final = "64MB"
_AGGREGATE_SETTINGS: Final = (
    f"SET LOCAL work_mem = '{QUERY_WORK_MEM}'; "
    # Buckets are estimated badly (an expression over ts): a hash aggregate sized for a few
    # groups spilled in batches, then the result was sorted again. Sorted input by
    # (series, bucket) gives groups already in the order asked for.
    "SET LOCAL enable_hashagg = off"
)
_C: Final = 'COLLATE "C"'  # order text by code point, as SQLite does, whatever the locale


# ---------------------------------------------------------------- values and globs


def value_of(i: int | None, f: float | None, t: str | None, b: bytes | None) -> Value:
    """The (i, f, t, b) columns of a stored reading -> its value (schema module docstring)."""
    if i is not None:
        return int(i)
    if f is not None:
        return float(f)
    if t is not None:
        return str(t)
    if b is not None:
        return bytes(b).decode()
    return None


def glob_regex(pattern: str) -> str:
    """An SQLite GLOB pattern as an anchored PostgreSQL regular expression."""
    out = ["^"]
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = i + 1
            if j < n and pattern[j] == "^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:  # no closing bracket: a literal "["
                out.append("\\[")
            else:
                body = pattern[i + 1 : j]
                neg = body.startswith("^")
                body = body[1:] if neg else body
                out.append("[" + ("^" if neg else "") + body.replace("\\", "\\\\") + "]")
                i = j
        elif c.isalnum() or ord(c) > 127:
            out.append(c)
        else:
            out.append("\\" + c)
        i += 1
    out.append("$")
    return "".join(out)


def _series_where(f: Filters) -> tuple[sql.Composable, list[object]]:
    clauses: list[sql.Composable] = [sql.SQL("true")]
    params: list[object] = []
    for column, globs in (("d.name", f.devices), ("s.sensor", f.sensors)):
        if globs:
            clauses.append(sql.SQL(f"{column} ~ ANY(%s)"))
            params.append([glob_regex(g) for g in globs])
    for column, values in (("s.kind", f.kinds), ("s.field", f.fields)):
        if values:
            clauses.append(sql.SQL(f"{column} = ANY(%s)"))
            params.append(list(values))
    return sql.SQL(" AND ").join(clauses), params


def resolve_series(conn: Conn, filters: Filters, *, after_id: int = 0) -> list[SeriesInfo]:
    """Series matching `filters` with id above `after_id`, by device, sensor, field, id.

    Tag filters are applied here, on the parsed tags: the tags column is JSON text (it may
    hold an escaped NUL, which PostgreSQL's jsonb refuses).
    """
    where, params = _series_where(filters)
    query = sql.SQL(
        "SELECT s.id, d.name, s.sensor, s.field, s.kind, s.unit, s.unit_raw, s.tags, "
        f"s.first_ts, l.ts, l.i, l.f, l.t, l.b, s.count FROM {SERIES} AS s "
        f"JOIN {DEVICES} AS d ON d.id = s.device_id LEFT JOIN {LATEST} AS l ON l.series_id = s.id "
        "WHERE s.id > %s AND {where} "
        f"ORDER BY d.name {_C}, s.sensor {_C}, s.field {_C}, s.id"
    ).format(where=where)
    tags_cache: dict[str, dict[str, str]] = {}
    out: list[SeriesInfo] = []
    for (
        sid,
        dev,
        sensor,
        fld,
        kind,
        unit,
        unit_raw,
        tag_json,
        first,
        last,
        i,
        f,
        t,
        b,
        n,
    ) in conn.execute(query, [after_id, *params]):
        tags = tags_cache.get(tag_json)
        if tags is None:
            tags = tags_cache[tag_json] = json.loads(tag_json)
        if any(tags.get(k) != v for k, v in filters.tags):
            continue
        info = SeriesInfo(
            sid,
            dev,
            sensor,
            fld,
            kind,
            unit if unit_raw is None else bytes(unit_raw).decode(),
            tags,
            first,
            last,
            value_of(i, f, t, b),
            int(n),
        )
        info.vtype = value_type(kind, fld)
        out.append(info)
    return out


def max_series_id(conn: Conn) -> int:
    row = conn.execute(f"SELECT coalesce(max(id), 0) FROM {SERIES}").fetchone()
    return int(row[0]) if row else 0


# ---------------------------------------------------------------- readings


def check_range_args(order: str, limit: int | None) -> None:
    """Raises ValueError for an unknown order or a negative limit."""
    if order not in ("asc", "desc"):
        raise ValueError(f"order must be 'asc' or 'desc', not {order!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, not {limit}")


def _time_where(since_ns: int | None, until_ns: int | None, params: list[object]) -> str:
    out = ""
    if since_ns is not None:
        out += " AND ts >= %s"
        params.append(since_ns)
    if until_ns is not None:
        out += " AND ts < %s"
        params.append(until_ns)
    return out


def read_range(
    conn: Conn,
    series_ids: Sequence[int],
    since_ns: int | None,
    until_ns: int | None,
    *,
    order: Order = "asc",
    limit: int | None = None,
) -> Iterator[tuple[int, int, Value]]:
    """(series_id, ts_ns, value) in [since, until) by (ts, series_id), through a server-side
    cursor in one transaction (one snapshot). The caller has checked the arguments."""
    ids = sorted({int(s) for s in series_ids})
    if not ids or limit == 0:
        return
    params: list[object] = [ids]
    where = _time_where(since_ns, until_ns, params)
    direction = "DESC" if order == "desc" else "ASC"
    query = (
        f"SELECT series_id, ts, i, f, t, b FROM {READINGS} WHERE series_id = ANY(%s){where} "
        f"ORDER BY ts {direction}, series_id {direction}"
    )
    if limit is not None:
        query += " LIMIT %s"
        params.append(limit)
    with conn.transaction(), conn.cursor(name="read_range") as cur:
        conn.execute(f"SET LOCAL work_mem = '{QUERY_WORK_MEM}'")
        cur.itersize = FETCH_ROWS
        cur.execute(query, params)
        for sid, ts, i, f, t, b in cur:
            yield sid, ts, value_of(i, f, t, b)


def check_aggregate_args(every_ns: int, agg: str) -> None:
    """Raises ValueError for a non-positive every_ns or an unknown aggregate."""
    if every_ns <= 0:
        raise ValueError(f"every_ns must be positive, not {every_ns}")
    if agg not in AGGREGATES:
        raise ValueError(f"unknown aggregate {agg!r}; expected one of {', '.join(AGGREGATES)}")


def aggregate(
    conn: Conn,
    series_ids: Sequence[int],
    since_ns: int | None,
    until_ns: int | None,
    every_ns: int,
    agg: Agg,
) -> Iterator[tuple[int, int, float | int | None]]:
    """(series_id, bucket_start_ns, value) per non-empty bucket, by series then bucket.

    Computed in SQL. As the SQLite backend: `count` counts every reading, the others use
    numeric values only (None for a bucket without any); an integer sum stays an integer.
    """
    ids = sorted({int(s) for s in series_ids})
    if not ids:
        return
    params: list[object] = [every_ns, every_ns, every_ns, ids]
    where = _time_where(since_ns, until_ns, params)
    # Floor to a multiple of every_ns, also for timestamps before the epoch.
    rows = (
        "SELECT series_id, ts - ((ts %% %s) + %s) %% %s AS bucket, ts, i, f "
        f"FROM {READINGS} WHERE series_id = ANY(%s){where}"
    )
    if agg in ("first", "last"):
        direction = "ASC" if agg == "first" else "DESC"
        query = (
            f"WITH r AS ({rows}), "
            "v AS (SELECT DISTINCT ON (series_id, bucket) series_id, bucket, i, f FROM r "
            "WHERE i IS NOT NULL OR f IS NOT NULL "
            f"ORDER BY series_id, bucket, ts {direction}) "
            "SELECT b.series_id, b.bucket, v.i, v.f FROM "
            "(SELECT DISTINCT series_id, bucket FROM r) AS b "
            "LEFT JOIN v ON v.series_id = b.series_id AND v.bucket = b.bucket "
            "ORDER BY 1, 2"
        )
        with conn.transaction(), conn.cursor(name="aggregate") as cur:
            cur.itersize = FETCH_ROWS
            cur.execute(query, params)
            for sid, bucket, i, f in cur:
                yield sid, bucket, (int(i) if i is not None else f)
        return
    query = (
        "SELECT series_id, bucket, count(*), count(i) + count(f), sum(i), sum(f), "
        f"min(i), min(f), max(i), max(f) FROM ({rows}) AS r GROUP BY 1, 2 ORDER BY 1, 2"
    )
    with conn.transaction(), conn.cursor(name="aggregate") as cur:
        conn.execute(_AGGREGATE_SETTINGS)
        cur.itersize = FETCH_ROWS
        cur.execute(query, params)
        for sid, bucket, n, numeric, sum_i, sum_f, min_i, min_f, max_i, max_f in cur:
            yield sid, bucket, _result(agg, n, numeric, sum_i, sum_f, min_i, min_f, max_i, max_f)


def _result(
    agg: Agg,
    n: int,
    numeric: int,
    sum_i: Decimal | None,
    sum_f: float | None,
    min_i: int | None,
    min_f: float | None,
    max_i: int | None,
    max_f: float | None,
) -> float | int | None:
    if agg == "count":
        return int(n)
    if not numeric:
        return None
    total: int | float = int(sum_i) if sum_i is not None else 0
    if sum_f is not None:
        total += sum_f
    if agg == "sum":
        return total
    if agg == "avg":
        return total / numeric
    if agg == "min":
        return min(x for x in (min_i, min_f) if x is not None)
    return max(x for x in (max_i, max_f) if x is not None)


def latest(conn: Conn, series_ids: Sequence[int] | None = None) -> list[tuple[int, int, Value]]:
    """(series_id, ts_ns, value) of each series' newest reading from the `latest` table."""
    query = f"SELECT series_id, ts, i, f, t, b FROM {LATEST}"
    params: list[object] = []
    if series_ids is not None:
        query += " WHERE series_id = ANY(%s)"
        params.append(sorted({int(s) for s in series_ids}))
    return [
        (sid, ts, value_of(i, f, t, b))
        for sid, ts, i, f, t, b in conn.execute(query + " ORDER BY series_id", params)
    ]


# ---------------------------------------------------------------- dead letters


def rejected(conn: Conn, which: RejectedFilter) -> list[Row]:
    """The dead letters `which` selects, by (receive time, id), as the SQLite listing
    shows them."""
    devices = which.devices
    where: tuple[str, list[object]] = (
        ("d.name ~ ANY(%s)", [[glob_regex(g) for g in devices]]) if devices else ("true", [])
    )
    query, params = rejected_query(DIALECT, where, which)
    return [
        rejected_row(rid, received, dev, seq, idx, code, path, msg, reading, replayed)
        for rid, received, dev, seq, idx, code, path, msg, reading, replayed in conn.execute(
            query, params
        )
    ]
