"""Read-side queries shared by the CLI (`collector.commands.query`) and the HTTP API.

Owns: parsing of query arguments (times, durations, tags) into int nanoseconds and filters,
resolving filters to series, turning what the storage (`collector.storage.interface.Storage`)
yields into plain row dicts, and device/series/rejected listings. The live tail cursor is
`Storage.tail`; the replay of stored rejects is `Storage.replay_rejected`.

Must not: name a backend or its tables (every read goes through the Storage interface), open
sockets, or write anything.

Every row is a `dict[str, object]` whose keys are the column names of the listing, so the
CLI formats (`collector.query.formats`) and the HTTP API (`collector.web.api`) print the same data.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, Literal, cast

from collector.durations import NS_PER_S, duration_ns
from collector.errors import ConfigError
from collector.storage.interface import Agg, RejectedFilter, Storage
from collector.storage.interface import Filters as Filters
from collector.storage.interface import SeriesInfo as SeriesInfo
from collector.storage.rows import base as _base
from collector.storage.rows import format_ts as format_ts
from collector.storage.rows import value as _value

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

Row = dict[str, object]
Order = Literal["asc", "desc"]

MAX_TS_NS: Final = (1 << 63) - 1
AGGS: Final = ("avg", "min", "max", "sum", "count", "first", "last")
ORDERS: Final = ("asc", "desc")

# RFC 3339 / ISO 8601: date, optional time with up to 9 fractional digits, optional offset.
# A time without an offset is UTC (documented in docs/api.md).
_ISO_RE: Final = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?"
    r"\s*([Zz]|[+-]\d{2}(?::?\d{2})?)?$"
)
_TAG_RE: Final = re.compile(r"^([A-Za-z_][A-Za-z0-9_.-]{0,63})=(.*)$")

# Column names of each listing, in display order.
READING_COLUMNS: Final = ("ts", "device", "sensor", "field", "kind", "value", "unit", "tags")
AGGREGATE_COLUMNS: Final = (
    "ts",
    "device",
    "sensor",
    "field",
    "kind",
    "agg",
    "value",
    "unit",
    "tags",
)
SERIES_COLUMNS: Final = (
    "id",
    "device",
    "sensor",
    "field",
    "kind",
    "unit",
    "tags",
    "first",
    "last",
    "count",
)
DEVICE_COLUMNS: Final = ("device", "last_seen", "connected", "readings", "series", "revoked")
REJECTED_COLUMNS: Final = (
    "id",
    "received",
    "device",
    "seq",
    "idx",
    "code",
    "path",
    "message",
    "reading",
    "replayed",
)


# ---------------------------------------------------------------- argument parsing (pure)


def parse_duration(text: str, *, option: str) -> int:
    """`15m`, `2h`, `7d`, `500ms` -> a positive number of nanoseconds.

    Raises ConfigError naming `option`.
    """
    ns = duration_ns(text)
    if ns is None:
        raise ConfigError(
            f"{option}: {text!r} is not a duration (a number and a unit: ns, us, ms, s, m, h, "
            "d or w, e.g. 15m)"
        )
    if ns <= 0:
        raise ConfigError(f"{option}: duration must be positive, got {text!r}")
    return ns


def parse_time(text: str, *, option: str, now_ns: int) -> int:
    """A point in time -> int ns since the epoch (UTC).

    Accepts `now`, a duration meaning that long before now (`15m`, `2h`, `7d`, with an
    optional leading `-`), RFC 3339 / ISO 8601 (`2026-11-25T10:00:00Z`, `2026-11-25`, up to
    nanosecond fractions; no offset means UTC), or `@<int ns>`.
    Raises ConfigError naming `option`.
    """
    t = text.strip()
    if t.lower() == "now":
        return now_ns
    if t.startswith("@") and t[1:].isdigit():
        return _check_range(int(t[1:]), text, option)
    rel = t[1:] if t.startswith("-") else t
    if duration_ns(rel) is not None:
        return _check_range(now_ns - parse_duration(rel, option=option), text, option)
    m = _ISO_RE.match(t)
    if m is None:
        raise ConfigError(
            f"{option}: {text!r} is not a time (use e.g. 15m, 2h, 7d, now, "
            "2026-11-25T10:00:00Z or 2026-11-25)"
        )
    year, month, day, hh, mm, ss, frac, tz = m.groups()
    try:
        dt = datetime(
            int(year), int(month), int(day), int(hh or 0), int(mm or 0), int(ss or 0), tzinfo=UTC
        )
    except ValueError as exc:
        raise ConfigError(f"{option}: {text!r} is not a valid date/time: {exc}") from None
    offset_s = 0
    if tz and tz not in "Zz":
        sign = -1 if tz[0] == "-" else 1
        digits = tz[1:].replace(":", "")
        offset_s = sign * (int(digits[:2]) * 3600 + int(digits[2:4] or 0) * 60)
    seconds = int(dt.timestamp()) - offset_s
    frac_ns = int((frac or "").ljust(9, "0")) if frac else 0
    return _check_range(seconds * NS_PER_S + frac_ns, text, option)


def _check_range(ns: int, text: str, option: str) -> int:
    if not 0 <= ns <= MAX_TS_NS:
        raise ConfigError(f"{option}: {text!r} is outside 1970..2262")
    return ns


def parse_tag(text: str, *, option: str = "--tag") -> tuple[str, str]:
    """`key=value` -> (key, value). Raises ConfigError naming `option`."""
    m = _TAG_RE.match(text)
    if m is None:
        raise ConfigError(f"{option}: {text!r} is not key=value with a valid tag key")
    return m.group(1), m.group(2)


def parse_order(text: str, *, option: str = "--order") -> Order:
    """`asc` or `desc`. Raises ConfigError naming `option`."""
    if text == "asc":
        return "asc"
    if text == "desc":
        return "desc"
    raise ConfigError(f"{option}: must be asc or desc, got {text!r}")


def parse_agg(text: str, *, option: str = "--agg") -> str:
    """One of AGGS. Raises ConfigError naming `option`."""
    if text not in AGGS:
        raise ConfigError(f"{option}: must be one of {', '.join(AGGS)}, got {text!r}")
    return text


def parse_limit(text: str | int, *, option: str = "--limit") -> int:
    """A positive integer. Raises ConfigError naming `option`."""
    try:
        n = int(text)
    except ValueError:
        raise ConfigError(f"{option}: must be a positive integer, got {text!r}") from None
    if n <= 0:
        raise ConfigError(f"{option}: must be a positive integer, got {text!r}")
    return n


# ---------------------------------------------------------------- series and values


def resolve_series(storage: Storage, f: Filters, *, after_id: int = 0) -> list[SeriesInfo]:
    """Series matching the filters (and with id > `after_id`), by device, sensor, field, id."""
    return storage.resolve_series(f, after_id=after_id)


def series_row(s: SeriesInfo) -> Row:
    """A series as a listing row."""
    return {
        "id": s.id,
        "device": s.device,
        "sensor": s.sensor,
        "field": s.field,
        "kind": s.kind,
        "unit": s.unit,
        "tags": s.tags,
        "first": None if s.first_ts is None else format_ts(s.first_ts),
        "last": None if s.last_ts is None else format_ts(s.last_ts),
        "first_ns": s.first_ts,
        "last_ns": s.last_ts,
        "count": s.count,
    }


def time_bounds(
    series: Sequence[SeriesInfo], since_ns: int | None, until_ns: int | None
) -> tuple[int, int]:
    """Fill an open range from the series' first/last timestamps (since incl., until excl.)."""
    if since_ns is None:
        firsts = [s.first_ts for s in series if s.first_ts is not None]
        since_ns = min(firsts) if firsts else 0
    if until_ns is None:
        lasts = [s.last_ts for s in series if s.last_ts is not None]
        until_ns = max(lasts) + 1 if lasts else MAX_TS_NS
    return since_ns, until_ns


# Readings one scan.read_range call should cover at most: the scan holds a window's head rows
# in memory, so an export of any size walks the range in windows of about this many rows.
ROWS_PER_SCAN: Final = 50_000


def _windows(series: Sequence[SeriesInfo], lo: int, hi: int, order: Order) -> list[tuple[int, int]]:
    """Split [lo, hi) into windows of about ROWS_PER_SCAN readings (from the series' density)."""
    total = sum(s.count for s in series)
    firsts = [s.first_ts for s in series if s.first_ts is not None]
    lasts = [s.last_ts for s in series if s.last_ts is not None]
    if total <= ROWS_PER_SCAN or not firsts or not lasts or hi - lo <= NS_PER_S:
        return [(lo, hi)]
    covered = max(1, max(lasts) - min(firsts))
    width = max(NS_PER_S, covered * ROWS_PER_SCAN // total)
    start, stop = max(lo, min(firsts)), min(hi, max(lasts) + 1)
    if start >= stop:
        return [(lo, hi)]
    edges = [*range(start, stop, width), stop]
    out = list(itertools.pairwise(edges))
    return out[::-1] if order == "desc" else out


def readings(
    storage: Storage,
    series: Sequence[SeriesInfo],
    since_ns: int | None,
    until_ns: int | None,
    *,
    order: Order = "asc",
    limit: int | None = None,
) -> Iterator[Row]:
    """Readings of the given series in [since, until), ordered by (ts, series id).

    Streamed in time windows (see ROWS_PER_SCAN): memory stays bounded for any range.
    """
    if not series:
        return
    by_id = {s.id: s for s in series}
    ids = list(by_id)
    lo, hi = time_bounds(series, since_ns, until_ns)
    n = 0
    for a, b in _windows(series, lo, hi, order):
        left = None if limit is None else limit - n
        for sid, ts, value in storage.read_range(ids, a, b, order=order, limit=left):
            s = by_id[sid]
            row = _base(s, ts)
            row["value"] = _value(s, value)
            yield row
            n += 1
        if limit is not None and n >= limit:
            return


def aggregates(
    storage: Storage,
    series: Sequence[SeriesInfo],
    since_ns: int | None,
    until_ns: int | None,
    every_ns: int,
    agg: str,
    *,
    order: Order = "asc",
    limit: int | None = None,
) -> Iterator[Row]:
    """Time-bucketed aggregates (buckets at epoch multiples of `every_ns`), via
    `Storage.aggregate`.

    Rows come ordered by (series id, bucket), series by series as the storage computes
    them (block summaries answer whole buckets without decoding); `order="desc"` reverses
    that order (buffered). Empty buckets are left out.
    """
    if not series:
        return
    by_id = {s.id: s for s in series}
    lo, hi = time_bounds(series, since_ns, until_ns)
    out = storage.aggregate(list(by_id), lo, hi, every_ns, _agg(agg))
    it: Iterable[tuple[int, int, object]] = out
    if order == "desc":
        it = sorted(out, key=lambda r: (r[0], r[1]), reverse=True)
    n = 0
    for sid, bucket, value in it:
        if limit is not None and n >= limit:
            return
        s = by_id[sid]
        row = _base(s, bucket)
        row["agg"] = agg
        if agg in ("avg", "sum"):
            number = s.vtype == "number"
            row["value"] = float(value) if number and isinstance(value, int) else value
        else:
            row["value"] = value if agg == "count" else _value(s, value)
        n += 1
        yield row


def _agg(text: str) -> Agg:
    if text in AGGS:
        return cast(Agg, text)
    raise ConfigError(f"--agg: must be one of {', '.join(AGGS)}, got {text!r}")


def latest(
    storage: Storage,
    series: Sequence[SeriesInfo],
    since_ns: int | None = None,
    until_ns: int | None = None,
) -> list[Row]:
    """The last reading of each series (optionally only those whose last reading is in range)."""
    if not series:
        return []
    by_id = {s.id: s for s in series}
    rows: list[Row] = []
    for sid, ts, value in storage.latest(list(by_id)):
        if (since_ns is not None and ts < since_ns) or (until_ns is not None and ts >= until_ns):
            continue
        s = by_id[sid]
        row = _base(s, ts)
        row["value"] = _value(s, value)
        rows.append(row)
    rows.sort(key=lambda r: (r["device"], r["sensor"], r["field"], r["series_id"]))
    return rows


# ---------------------------------------------------------------- devices and rejects


def list_devices(storage: Storage, connected: Collection[str] | None = None) -> list[Row]:
    """Devices with last seen, readings total and series count.

    `connected` is the set of device names the running collector has open connections for;
    None (reading the file directly) reports `connected` as null: the file cannot know.
    """
    totals: dict[str, list[int]] = {}
    for s in storage.resolve_series(Filters()):
        t = totals.setdefault(s.device, [0, 0])
        t[0] += s.count
        t[1] += 1
    rows: list[Row] = []
    for d in storage.list_devices():
        total, n_series = totals.get(d.name, (0, 0))
        rows.append(
            {
                "device": d.name,
                "last_seen": None if d.last_seen_ns is None else format_ts(d.last_seen_ns),
                "last_seen_ns": d.last_seen_ns,
                "connected": None if connected is None else d.name in connected,
                "readings": total,
                "series": n_series,
                "revoked": d.revoked_ns is not None,
            }
        )
    return rows


def list_rejected(storage: Storage, which: RejectedFilter) -> list[Row]:
    """Rows of the dead-letter table `which` selects, by (receive time, id)
    (`Storage.rejected`)."""
    return storage.rejected(which)


def now_ns() -> int:
    """Wall-clock now in int ns (for relative times)."""
    return time.time_ns()
