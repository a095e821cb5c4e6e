"""How a stored reading and a series look as rows: shared by every backend and the query layer.

A `Row` is a `dict[str, object]` keyed by listing column names, so the CLI formats and the
HTTP API print the same data whichever backend read it. Pure: no I/O, no SQL.
"""

from __future__ import annotations

import time
from typing import Final

from collector.durations import NS_PER_S
from collector.storage.interface import Row, SeriesInfo
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
