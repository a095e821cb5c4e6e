"""How a stored reading and a series look as rows: shared by every backend and the query layer.

A `Row` is a `dict[str, object]` keyed by listing column names, so the CLI formats and the
HTTP API print the same data whichever backend read it.

The SQL both backends would otherwise write twice, differing in little more than their
placeholders (the dead-letter listing, the imports of `telemetry migrate`), is built here
too, in a backend's `Dialect`; the backend runs it. Pure: no I/O.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from collector.durations import NS_PER_S
from collector.storage.interface import (
    DeadLetter,
    DeadLetterRecord,
    DeviceRecord,
    RejectedFilter,
    Row,
    SeriesInfo,
)
from schemas.kinds import BUILTIN_KINDS, KindSpec


def format_ts(ns: int) -> str:
    """int ns -> RFC 3339 in UTC with nanoseconds, e.g. `2026-11-25T10:00:00.000000001Z`."""
    seconds, frac = divmod(ns, NS_PER_S)
    # time.strftime(gmtime): a third of the cost of datetime.strftime; runs once per row.
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{base}.{frac:09d}Z" if frac else f"{base}Z"


_KINDS: Final[dict[str, KindSpec]] = {k.name: k for k in BUILTIN_KINDS}


def value_type(kind: str, fld: str) -> str | None:
    """The value type of a kind's field (`SeriesInfo.vtype`); None for a user-defined kind."""
    spec = _KINDS.get(kind)
    if spec is None:
        return None  # a user-defined kind: shown as stored
    if spec.type == "object":
        return next((f.type for f in spec.fields if f.name == fld), None)
    return spec.type


def value(s: SeriesInfo, v: object) -> object:
    """A stored value as the reading had it (the series' kind says its type)."""
    # Storage gives back what SQLite kept: bools as 0/1, and whole floats as integers (the
    # value column has NUMERIC affinity). The kind says what the reading was.
    if v is None or isinstance(v, str | bytes):
        return v
    if s.vtype == "bool":
        return bool(v)
    if s.vtype == "number" and isinstance(v, int):
        return float(v)
    return v


def base(s: SeriesInfo, ts: int) -> Row:
    """The columns of a reading row every listing shares (without its value)."""
    return {
        "ts": format_ts(ts),
        "ts_ns": ts,
        "device": s.device,
        "sensor": s.sensor,
        "field": s.field,
        "kind": s.kind,
        "unit": s.unit,
        "tags": s.tags,
        "series_id": s.id,
    }


def reading_row(s: SeriesInfo, ts: int, v: object) -> Row:
    """One reading of series `s` as a listing row."""
    row = base(s, ts)
    row["value"] = value(s, v)
    return row


def rejected_row(
    rid: int,
    received_ns: int,
    device: str,
    seq: int,
    idx: int,
    code: str,
    path: str,
    message: str,
    reading: str,
    replayed_ns: int | None,
) -> Row:
    """One dead letter as every listing shows it (the columns in this order)."""
    return {
        "id": rid,
        "received": format_ts(received_ns),
        "received_ns": received_ns,
        "device": device,
        "seq": seq,
        "idx": idx,
        "code": code,
        "path": path,
        "message": message,
        "reading": reading,
        "replayed": None if replayed_ns is None else format_ts(replayed_ns),
    }


def device_records(
    devices: Iterable[tuple[int, str, str, int, int | None, int, int]],
    streams: Iterable[tuple[int, str, int]],
) -> list[DeviceRecord]:
    """`DeviceRecord`s from (id, name, token_hash, created_ns, revoked_ns, spool_dropped,
    last_seq) device rows, in their order, and (device_id, stream, last_seq) stream rows.

    A device with a last seq but no default-stream row (it has not said HELLO since streams
    existed) gets its v1.0 last seq as the default stream's."""
    own: dict[int, list[tuple[str, int]]] = {}
    for dev, stream, last in streams:
        own.setdefault(int(dev), []).append((str(stream), int(last)))
    out = []
    for dev_id, name, token_hash, created, revoked, dropped, last_seq in devices:
        mine = own.get(int(dev_id), [])
        if last_seq and not any(s == "" for s, _ in mine):
            mine.insert(0, ("", int(last_seq)))
        out.append(
            DeviceRecord(
                str(name), str(token_hash), int(created), revoked, int(dropped), tuple(mine)
            )
        )
    return out


# ---------------------------------------------------------------- SQL both backends share


@dataclass(frozen=True, slots=True)
class Dialect:
    """What tells one backend's SQL from the other's in the statements they share."""

    # The parameter placeholder: "?" (sqlite3) or "%s" (psycopg).
    ph: str
    # A list binds to one placeholder (PostgreSQL: `x = ANY(%s)`); otherwise each value has
    # its own (SQLite: `x IN (?,?)`).
    arrays: bool
    # The larger of two values: SQLite's two-argument max(), PostgreSQL's greatest().
    greatest: str
    # Ends the SELECT that reads a device before changing it: PostgreSQL locks the row
    # (" FOR UPDATE"); SQLite's BEGIN IMMEDIATE already holds the write lock ("").
    lock_row: str
    # The tables' names in this backend.
    devices: str
    streams: str
    rejected: str

    def marks(self, n: int) -> str:
        """`n` placeholders, comma-separated (a VALUES list)."""
        return ", ".join([self.ph] * n)

    def one_of(self, column: str, values: Sequence[object]) -> tuple[str, list[object]]:
        """The condition "`column` is one of `values`" (not empty) and its parameters."""
        if self.arrays:
            return f"{column} = ANY({self.ph})", [list(values)]
        return f"{column} IN (" + ",".join(self.ph for _ in values) + ")", list(values)


def rejected_query(
    d: Dialect, devices: tuple[str, Sequence[object]], which: RejectedFilter
) -> tuple[str, list[object]]:
    """The dead-letter listing (`Storage.rejected`): its SELECT and parameters. Rows come by
    (receive time, id) in `which.order`, their columns in `rejected_row`'s argument order.

    `devices`: the backend's condition on `d.name` for `which.devices` and its parameters
    (the backends match globs differently: SQLite GLOB, PostgreSQL regular expressions)."""
    where, device_params = devices
    clauses = [where]
    params = list(device_params)
    if which.since_ns is not None:
        clauses.append(f"r.received_ns >= {d.ph}")
        params.append(which.since_ns)
    if which.until_ns is not None:
        clauses.append(f"r.received_ns < {d.ph}")
        params.append(which.until_ns)
    if which.codes:
        clause, values = d.one_of("r.code", which.codes)
        clauses.append(clause)
        params.extend(values)
    if which.pending_only:
        clauses.append("r.replayed_ns IS NULL")
    order = which.order
    if which.after is not None:
        clauses.append(f"(r.received_ns, r.id) {'<' if order == 'desc' else '>'} ({d.marks(2)})")
        params.extend(which.after)
    direction = "DESC" if order == "desc" else "ASC"
    query = (
        "SELECT r.id, r.received_ns, d.name, r.seq, r.idx, r.code, r.path, r.message, "
        f"r.reading, r.replayed_ns FROM {d.rejected} AS r "
        f"JOIN {d.devices} AS d ON d.id = r.device_id WHERE {' AND '.join(clauses)} "
        f"ORDER BY r.received_ns {direction}, r.id {direction}"
    )
    if which.limit is not None:
        query += f" LIMIT {d.ph}"
        params.append(which.limit)
    return query, params


@dataclass(frozen=True, slots=True)
class ImportSql:
    """The statements of `Storage.import_device`, `Storage.import_dead_letters` and
    `Storage.export_dead_letters` (`telemetry migrate`) in one backend's dialect; the
    backend runs them in its own transaction. Each comment names the parameters in order."""

    # (name) -> id, token_hash; the row locked where the dialect locks rows.
    device: str
    # (name, token_hash, created_ns, revoked_ns, spool_dropped) -> id
    insert_device: str
    # (revoked_ns, id): an earlier revocation stays.
    revoke_device: str
    # (device_id, stream, last_seq, created_ns): a stream already there keeps the larger
    # last seq.
    merge_stream: str
    # (last_seq, id): the device row's own last seq (the default stream's, from v1.0), only
    # ever raised.
    raise_device_seq: str
    # (name) -> id
    device_id: str
    # (device_id, seq, idx, raw, received_ns) -> a row when that dead letter is there already.
    dead_letter_seen: str
    # (device_id, received_ns, seq, idx, raw, reading, code, path, message, replayed_ns)
    insert_dead_letter: str
    # () -> every dead letter by (received_ns, id) as `dead_letter_record` takes it
    export_dead_letters: str


def import_sql(d: Dialect) -> ImportSql:
    """`ImportSql` for dialect `d` (built once per backend)."""
    p = d.ph
    return ImportSql(
        device=f"SELECT id, token_hash FROM {d.devices} WHERE name = {p}{d.lock_row}",
        insert_device=(
            f"INSERT INTO {d.devices} (name, token_hash, created_ns, revoked_ns, spool_dropped) "
            f"VALUES ({d.marks(5)}) RETURNING id"
        ),
        revoke_device=(
            f"UPDATE {d.devices} SET revoked_ns = coalesce(revoked_ns, {p}) WHERE id = {p}"
        ),
        merge_stream=(
            f"INSERT INTO {d.streams} (device_id, stream, last_seq, epoch, created_ns) "
            f"VALUES ({p}, {p}, {p}, 0, {p}) ON CONFLICT (device_id, stream) DO UPDATE SET "
            f"last_seq = {d.greatest}({d.streams}.last_seq, excluded.last_seq)"
        ),
        raise_device_seq=(
            f"UPDATE {d.devices} SET last_seq = {d.greatest}(last_seq, {p}) WHERE id = {p}"
        ),
        device_id=f"SELECT id FROM {d.devices} WHERE name = {p}",
        dead_letter_seen=(
            f"SELECT 1 FROM {d.rejected} WHERE device_id = {p} AND seq = {p} AND idx = {p} "
            f"AND raw = {p} AND received_ns = {p}"
        ),
        insert_dead_letter=(
            f"INSERT INTO {d.rejected} (device_id, received_ns, seq, idx, raw, reading, code, "
            f"path, message, replayed_ns) VALUES ({d.marks(10)})"
        ),
        export_dead_letters=(
            "SELECT d.name, r.received_ns, r.seq, r.idx, r.raw, r.reading, r.code, r.path, "
            f"r.message, r.replayed_ns FROM {d.rejected} AS r "
            f"JOIN {d.devices} AS d ON d.id = r.device_id ORDER BY r.received_ns, r.id"
        ),
    )


def dead_letter_record(row: Sequence[Any]) -> DeadLetterRecord:
    """A row of `ImportSql.export_dead_letters` as the record `telemetry migrate` copies."""
    name, received, seq, idx, raw, reading, code, path, message, replayed = row
    letter = DeadLetter(int(idx), bytes(raw), str(reading), str(code), str(path), str(message))
    return DeadLetterRecord(str(name), int(received), int(seq), letter, replayed)
