"""How a stored reading and a series look as rows: shared by every backend and the query layer.

A `Row` is a `dict[str, object]` keyed by listing column names, so the CLI formats and the
HTTP API print the same data whichever backend read it. Pure: no I/O, no SQL.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Final

from collector.durations import NS_PER_S
from collector.storage.interface import DeviceRecord, Row, SeriesInfo
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
