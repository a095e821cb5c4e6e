"""The Server-Sent Events stream of /api/v1/stream: readings as they are committed.

Two shapes, both over the stream's own tail cursor (`Storage.tail`):

- raw (default): one `reading` event per reading, checked every `STREAM_POLL_S`;
- throttled (`throttle=1s`, what the dashboard asks for): at most one `summary` event per
  interval, summing the new readings per series (and per time bucket of `every` when given):
  count, sum, min, max and the last value. A browser gets about one update a second however
  fast devices send, and can merge each bucket into a chart of aggregates exactly.

Every event carries an `id:` (the largest (timestamp, series id) key sent so far). A client
that reconnects with `Last-Event-ID` resumes after that key, at most `STREAM_RESUME_MAX_NS`
back. `collector.web.api` parses the parameters and calls `serve`; this module holds no
routes, and writes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from collector.durations import NS_PER_S
from collector.query import readings as query
from collector.query.formats import dumps_json, dumps_row
from collector.storage.interface import Storage

log = logging.getLogger(__name__)

# How often a raw stream looks for new commits (one PRAGMA when idle), and how often a
# stream sends a comment line so proxies and clients see the connection alive.
STREAM_POLL_S: Final = 0.2
STREAM_KEEPALIVE_S: Final = 15.0
# A throttled stream's interval bounds: below the raw poll it would poll more often than a
# raw stream; above a minute a browser's "live" view would look dead.
MIN_THROTTLE_NS: Final = 200_000_000
MAX_THROTTLE_NS: Final = 60 * NS_PER_S
# How far back a Last-Event-ID may resume: the first poll materialises everything since
# then, so the gap a reconnect can fill is bounded (a browser reconnects within seconds).
STREAM_RESUME_MAX_NS: Final = 60 * NS_PER_S


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """What one stream request asked for (already validated by the caller)."""

    filters: query.Filters
    resume: tuple[int, int] | None = None
    throttle_ns: int | None = None
    every_ns: int | None = None


def parse_event_id(text: str) -> tuple[int, int] | None:
    """An event id `<ts_ns>.<series_id>` -> its key; None if `text` is not one."""
    ts, _, sid = text.strip().partition(".")
    if not (ts.lstrip("-").isdigit() and sid.isdigit()):
        return None
    return int(ts), int(sid)


@dataclass(slots=True)
class _Bucket:
    first: query.Row
    ts_ns: int
    count: int = 0
    numeric: int = 0
    total: float = 0.0
    low: float = 0.0
    high: float = 0.0
    last: object = None
    last_ts_ns: int = 0

    def add(self, ts: int, value: object) -> None:
        self.count += 1
        self.last, self.last_ts_ns = value, ts
        if isinstance(value, int | float):
            v = float(value)
            self.low = v if self.numeric == 0 else min(self.low, v)
            self.high = v if self.numeric == 0 else max(self.high, v)
            self.total += v
            self.numeric += 1

    def as_dict(self) -> dict[str, object]:
        r, some = self.first, self.numeric > 0
        return {
            "series_id": r["series_id"],
            "device": r["device"],
            "sensor": r["sensor"],
            "field": r["field"],
            "kind": r["kind"],
            "unit": r["unit"],
            "ts_ns": self.ts_ns,
            "count": self.count,
            "sum": self.total if some else None,
            "min": self.low if some else None,
            "max": self.high if some else None,
            "last": self.last,
            "last_ts_ns": self.last_ts_ns,
        }


def summarise(rows: list[query.Row], every_ns: int | None) -> list[dict[str, object]]:
    """New readings summed per series, or per (series, bucket of `every_ns`) when given.

    Each entry: the series' identity, `ts_ns` (the bucket's start, or the first reading's
    timestamp without buckets), `count`, `sum`/`min`/`max` over numeric values (booleans as
    0/1, as /aggregate does; null when none) and `last`/`last_ts_ns` (the newest reading).
    `rows` come ordered by (timestamp, series id), so the last one seen is the newest.
    """
    groups: dict[tuple[int, int], _Bucket] = {}
    for r in rows:
        sid, ts = r["series_id"], r["ts_ns"]
        assert isinstance(sid, int) and isinstance(ts, int)
        start = ts - ts % every_ns if every_ns else 0
        b = groups.get((sid, start))
        if b is None:
            b = groups[(sid, start)] = _Bucket(r, start if every_ns else ts)
        b.add(ts, r["value"])
    return [b.as_dict() for b in groups.values()]


async def serve(
    request: web.Request,
    storage: Callable[[], Storage],
    stopping: asyncio.Event,
    spec: StreamSpec,
) -> web.StreamResponse:
    """Answer one stream request until the client leaves or `stopping` is set."""
    tail = await asyncio.to_thread(lambda: storage().tail(spec.filters))
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    try:
        last_key = (-1, -1)
        if spec.resume is not None:
            oldest = query.now_ns() - STREAM_RESUME_MAX_NS
            last_key = spec.resume if spec.resume[0] >= oldest else (oldest, 0)
            tail.rewind(*last_key)
        await resp.prepare(request)
        # Tells the client the cursor is set: everything after this line is new.
        await resp.write(b": ready\n\n")
        loop = asyncio.get_running_loop()
        last_sent = loop.time()
        wait_s = STREAM_POLL_S if spec.throttle_ns is None else spec.throttle_ns / NS_PER_S
        while not stopping.is_set():
            rows = await asyncio.to_thread(tail.poll)
            if rows:
                await resp.write(_events(rows, spec, last_key).encode())
                if spec.throttle_ns is not None:
                    last_key = max(last_key, _key(rows[-1]))
                last_sent = loop.time()
            elif loop.time() - last_sent >= STREAM_KEEPALIVE_S:
                await resp.write(b": keepalive\n\n")
                last_sent = loop.time()
            try:
                await asyncio.wait_for(stopping.wait(), wait_s)
            except TimeoutError:
                pass
    except ConnectionResetError:
        # The client left (a browser changing pages does, all the time): not an error.
        log.debug("stream client went away peer=%s", request.remote)
        if not resp.prepared:
            raise
    finally:
        await asyncio.to_thread(tail.close)
    return resp


def _key(row: query.Row) -> tuple[int, int]:
    ts, sid = row["ts_ns"], row["series_id"]
    assert isinstance(ts, int) and isinstance(sid, int)
    return ts, sid


def _events(rows: list[query.Row], spec: StreamSpec, last_key: tuple[int, int]) -> str:
    """The text of the events for one poll's rows (ordered by (timestamp, series id))."""
    if spec.throttle_ns is None:
        return "".join(
            f"id: {r['ts_ns']}.{r['series_id']}\nevent: reading\ndata: {dumps_row(r)}\n\n"
            for r in rows
        )
    ts, sid = max(last_key, _key(rows[-1]))
    body = {
        "readings": len(rows),
        "every_ns": spec.every_ns,
        "buckets": summarise(rows, spec.every_ns),
    }
    return f"id: {ts}.{sid}\nevent: summary\ndata: {dumps_json(body)}\n\n"
