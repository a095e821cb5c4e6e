"""Read-only JSON HTTP API over `collector.query.readings` (aiohttp routes under /api/v1).

    GET /api/v1/series      series matching the filters
    GET /api/v1/readings    readings in a range, paginated by an opaque cursor
    GET /api/v1/aggregate   time-bucketed aggregates (every + agg), paginated
    GET /api/v1/latest      the last reading of each matching series
    GET /api/v1/rejected    the dead-letter table
    GET /api/v1/stream      Server-Sent Events: readings committed after the request
                            (collector.web.stream)

docs/api.md is the reference. The collector's HTTP server (`collector.web.http`) calls
`register(app, storage)` and serves /api/v1/devices itself (it holds the live connection
state and per-device counters); this module owns only the routes above. Every database
call runs in a worker thread on its own read-only connection (never on the event loop,
never taking the write lock). Bad parameters answer 400 `{"error": ..., "param": ...}`;
with a read token, a request without `Authorization: Bearer <token>` answers 401.

Must not: write to the database, log per request or per reading, or hold a connection
between requests (except a stream's own connection, closed when the stream ends).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import threading
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final, TypeVar

from aiohttp import web
from multidict import MultiMapping

from collector.errors import ConfigError
from collector.query import readings as query
from collector.query.formats import dumps_json
from collector.storage.factory import open_storage
from collector.storage.interface import RejectedFilter, Storage
from collector.web import stream as http_stream

log = logging.getLogger(__name__)

PREFIX: Final = "/api/v1"
# Page size when the request gives no limit, and the largest page one request may ask for:
# a page is built in memory, so the cap bounds what one request costs.
DEFAULT_PAGE_ROWS: Final = 1_000
MAX_PAGE_ROWS: Final = 10_000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Config:
    db: Storage | str
    token: str | None
    stopping: asyncio.Event
    # The storage opened from `db` at the first request that needs it (a str `db`).
    opened: list[Storage] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def storage(self) -> Storage:
        """The storage the routes read (opened read-only on first use from a location)."""
        if not isinstance(self.db, str):
            return self.db
        with self.lock:
            if not self.opened:
                self.opened.append(open_storage(self.db, readonly=True))
            return self.opened[0]


_CONFIG: Final = web.AppKey("telemetry_query_api", _Config)


class BadParam(Exception):
    """A query parameter is invalid; answered with 400 naming it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_token(host: str, token: str | None) -> None:
    """Refuse to serve readings on a non-loopback address without a read token.

    Raises ConfigError (for the collector's start-up checks).
    """
    if token is None and not is_loopback(host):
        raise ConfigError(
            f"setting 'http_token': the HTTP API on {host} is reachable from other machines; "
            "set a read token (TELEMETRY_HTTP_TOKEN) or bind it to 127.0.0.1"
        )


def register(
    app: web.Application,
    db: Storage | str,
    *,
    token: str | None = None,
) -> None:
    """Add the /api/v1 routes to `app`, reading `db` (a storage, or where one is: a file
    path or URL, opened read-only at the first request).

    `token`: when set, every route requires `Authorization: Bearer <token>`.
    """
    app[_CONFIG] = _Config(db, token, asyncio.Event())

    async def on_shutdown(app: web.Application) -> None:
        app[_CONFIG].stopping.set()  # ends open streams so shutdown does not wait on them

    app.on_shutdown.append(on_shutdown)
    routes = {
        "series": _series,
        "readings": _readings,
        "aggregate": _aggregate,
        "latest": _latest,
        "rejected": _rejected,
        "stream": _stream,
    }
    for name, handler in routes.items():
        app.router.add_get(f"{PREFIX}/{name}", guard(handler))


def guard(handler: Handler) -> Handler:
    """Wrap a handler: read-token check (when `register` was given one) and 400 on BadParam.

    The collector's own read routes (e.g. /api/v1/devices) can use it so one token covers
    every read route; call it on handlers added after `register`.
    """

    async def wrapped(request: web.Request) -> web.StreamResponse:
        cfg = request.app[_CONFIG]
        if cfg.token is not None and not bearer_ok(request, cfg.token):
            return _error(401, "a valid read token is required", "Authorization")
        try:
            return await handler(request)
        except BadParam as exc:
            return _error(400, exc.message, exc.param)

    return wrapped


def bearer_ok(request: web.Request, token: str) -> bool:
    """True when the request carries `Authorization: Bearer <token>` (constant-time check)."""
    given = request.headers.get("Authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


def _error(status: int, message: str, param: str) -> web.Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return web.json_response(
        {"error": message, "param": param}, status=status, headers=headers, dumps=_dumps
    )


def _dumps(obj: object) -> str:
    return dumps_json(obj)


def _json_rows(key: str, rows: list[query.Row], extra: Mapping[str, object]) -> web.Response:
    return web.Response(text=dumps_json({key: rows, **extra}), content_type="application/json")


def storage_of(app: web.Application) -> Storage:
    """The storage `register` was given (opened on first use; call it in a worker thread)."""
    return app[_CONFIG].storage()


async def _in_db(request: web.Request, fn: Callable[[Storage], T]) -> T:
    cfg = request.app[_CONFIG]
    return await asyncio.to_thread(lambda: fn(cfg.storage()))


# ---------------------------------------------------------------- parameters


def _parse(param: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except ConfigError as exc:
        raise BadParam(param, exc.format_message()) from None


def _one(q: MultiMapping[str], name: str) -> str | None:
    values = q.getall(name, [])
    if len(values) > 1:
        raise BadParam(name, f"{name}: give at most one value")
    return values[0] if values else None


def _filters(q: MultiMapping[str]) -> query.Filters:
    tags: list[tuple[str, str]] = []
    for text in q.getall("tag", []):
        try:
            tags.append(query.parse_tag(text, option="tag"))
        except ConfigError as exc:
            raise BadParam("tag", exc.format_message()) from None
    return query.Filters(
        devices=tuple(q.getall("device", [])),
        sensors=tuple(q.getall("sensor", [])),
        kinds=tuple(q.getall("kind", [])),
        fields=tuple(q.getall("field", [])),
        tags=tuple(tags),
    )


def _time(q: MultiMapping[str], name: str, now: int) -> int | None:
    text = _one(q, name)
    if text is None:
        return None
    return _parse(name, lambda: query.parse_time(text, option=name, now_ns=now))


def _range(q: MultiMapping[str]) -> tuple[int | None, int | None]:
    now = query.now_ns()
    since, until = _time(q, "since", now), _time(q, "until", now)
    if since is not None and until is not None and since >= until:
        raise BadParam("until", "until: must be after since")
    return since, until


def _limit(q: MultiMapping[str], default: int | None, cap: int | None) -> int | None:
    text = _one(q, "limit")
    if text is None:
        return default
    n = _parse("limit", lambda: query.parse_limit(text, option="limit"))
    if cap is not None and n > cap:
        raise BadParam("limit", f"limit: at most {cap} per page (use the cursor for more)")
    return n


def _order(q: MultiMapping[str]) -> query.Order:
    text = _one(q, "order")
    return (
        "asc" if text is None else _parse("order", lambda: query.parse_order(text, option="order"))
    )


def _cursor(q: MultiMapping[str]) -> tuple[int, int] | None:
    text = _one(q, "cursor")
    if text is None:
        return None
    ts, _, sid = text.partition(".")
    if not (ts.isdigit() and sid.isdigit()):
        raise BadParam("cursor", "cursor: not a cursor returned by this API")
    return int(ts), int(sid)


def _check_known(q: MultiMapping[str], allowed: Collection[str]) -> None:
    for name in q:
        if name not in allowed:
            raise BadParam(
                name, f"{name}: unknown parameter (allowed: {', '.join(sorted(allowed))})"
            )


_FILTER_PARAMS: Final = frozenset({"device", "sensor", "kind", "field", "tag"})
_RANGE_PARAMS: Final = _FILTER_PARAMS | {"since", "until", "order", "limit", "cursor"}


# ---------------------------------------------------------------- handlers


async def _series(request: web.Request) -> web.Response:
    _check_known(request.query, _FILTER_PARAMS)
    f = _filters(request.query)
    rows = await _in_db(
        request, lambda c: [query.series_row(s) for s in query.resolve_series(c, f)]
    )
    return _json_rows("series", rows, {})


async def _latest(request: web.Request) -> web.Response:
    _check_known(request.query, _FILTER_PARAMS | {"since", "until"})
    f = _filters(request.query)
    since, until = _range(request.query)
    rows = await _in_db(
        request, lambda c: query.latest(c, query.resolve_series(c, f), since, until)
    )
    return _json_rows("readings", rows, {})


def _paged(
    rows: Iterator[query.Row],
    key: Callable[[query.Row], tuple[int, int]],
    cursor: tuple[int, int] | None,
    order: query.Order,
    limit: int,
) -> tuple[list[query.Row], str | None]:
    """One page of `rows` after `cursor` (a key in iteration order), plus the next cursor."""
    out: list[query.Row] = []
    for r in rows:
        k = key(r)
        if cursor is not None and (k <= cursor if order == "asc" else k >= cursor):
            continue
        out.append(r)
        if len(out) > limit:
            break
    if len(out) > limit:
        del out[limit:]
        a, b = key(out[-1])
        return out, f"{a}.{b}"
    return out, None


def _ts_key(r: query.Row) -> tuple[int, int]:
    ts, sid = r["ts_ns"], r["series_id"]
    assert isinstance(ts, int) and isinstance(sid, int)
    return ts, sid


def _series_key(r: query.Row) -> tuple[int, int]:
    ts, sid = _ts_key(r)
    return sid, ts


def _after_cursor(
    since: int | None, until: int | None, cursor: tuple[int, int] | None, order: query.Order
) -> tuple[int | None, int | None]:
    if cursor is None:
        return since, until
    if order == "asc":
        return (cursor[0] if since is None else max(since, cursor[0])), until
    return since, (cursor[0] + 1 if until is None else min(until, cursor[0] + 1))


async def _readings(request: web.Request) -> web.Response:
    q = request.query
    _check_known(q, _RANGE_PARAMS)
    f, (since, until), order = _filters(q), _range(q), _order(q)
    limit = _limit(q, DEFAULT_PAGE_ROWS, MAX_PAGE_ROWS) or DEFAULT_PAGE_ROWS
    cursor = _cursor(q)
    lo, hi = _after_cursor(since, until, cursor, order)

    def run(c: Storage) -> tuple[list[query.Row], str | None]:
        series = query.resolve_series(c, f)
        # At most one row per series shares the cursor's timestamp: that many may be skipped.
        it = query.readings(c, series, lo, hi, order=order, limit=limit + len(series) + 1)
        return _paged(it, _ts_key, cursor, order, limit)

    rows, nxt = await _in_db(request, run)
    return _json_rows("readings", rows, {"next": nxt})


async def _aggregate(request: web.Request) -> web.Response:
    q = request.query
    _check_known(q, _RANGE_PARAMS | {"every", "agg"})
    f, (since, until), order = _filters(q), _range(q), _order(q)
    every_text, agg_text = _one(q, "every"), _one(q, "agg")
    if every_text is None:
        raise BadParam("every", "every: required (a bucket width such as 5m)")
    every = _parse("every", lambda: query.parse_duration(every_text, option="every"))
    agg = _parse("agg", lambda: query.parse_agg(agg_text or "", option="agg"))
    limit = _limit(q, DEFAULT_PAGE_ROWS, MAX_PAGE_ROWS) or DEFAULT_PAGE_ROWS
    cursor = _cursor(q)

    def run(c: Storage) -> tuple[list[query.Row], str | None]:
        series = query.resolve_series(c, f)
        if cursor is not None:  # rows come by (series id, bucket): skip finished series
            first = cursor[0]
            series = [s for s in series if (s.id >= first if order == "asc" else s.id <= first)]
        it = query.aggregates(c, series, since, until, every, agg, order=order)
        return _paged(it, _series_key, cursor, order, limit)

    rows, nxt = await _in_db(request, run)
    return _json_rows("aggregates", rows, {"next": nxt, "every_ns": every, "agg": agg})


async def _rejected(request: web.Request) -> web.Response:
    q = request.query
    _check_known(q, {"device", "since", "until", "code", "pending", "order", "limit", "cursor"})
    since, until = _range(q)
    order = _order(q)
    limit = _limit(q, DEFAULT_PAGE_ROWS, MAX_PAGE_ROWS) or DEFAULT_PAGE_ROWS
    cursor = _cursor(q)
    pending = _one(q, "pending")
    if pending not in (None, "true", "false", "1", "0"):
        raise BadParam("pending", "pending: must be true or false")
    devices, codes = tuple(q.getall("device", [])), tuple(q.getall("code", []))

    def run(c: Storage) -> tuple[list[query.Row], str | None]:
        rows = list(
            query.list_rejected(
                c,
                RejectedFilter(
                    devices=devices,
                    since_ns=since,
                    until_ns=until,
                    codes=codes,
                    pending_only=pending in ("true", "1"),
                    order=order,
                    limit=limit + 1,
                    after=cursor,
                ),
            )
        )
        if len(rows) <= limit:
            return rows, None
        del rows[limit:]
        return rows, f"{rows[-1]['received_ns']}.{rows[-1]['id']}"

    rows, nxt = await _in_db(request, run)
    return _json_rows("rejected", rows, {"next": nxt})


async def _stream(request: web.Request) -> web.StreamResponse:
    q = request.query
    _check_known(q, _FILTER_PARAMS | {"throttle", "every"})
    throttle_text, every_text = _one(q, "throttle"), _one(q, "every")
    throttle = every = None
    if throttle_text is not None:
        throttle = _parse(
            "throttle", lambda: query.parse_duration(throttle_text, option="throttle")
        )
        if not http_stream.MIN_THROTTLE_NS <= throttle <= http_stream.MAX_THROTTLE_NS:
            raise BadParam("throttle", "throttle: between 200ms and 60s")
    if every_text is not None:
        if throttle is None:
            raise BadParam("every", "every: only with throttle (buckets of the summaries)")
        every = _parse("every", lambda: query.parse_duration(every_text, option="every"))
    resume = None
    last_id = request.headers.get("Last-Event-ID")
    if last_id:
        resume = http_stream.parse_event_id(last_id)
        if resume is None:
            raise BadParam("Last-Event-ID", "Last-Event-ID: not an event id sent by this stream")
    cfg = request.app[_CONFIG]
    spec = http_stream.StreamSpec(_filters(q), resume, throttle, every)
    return await http_stream.serve(request, cfg.storage, cfg.stopping, spec)
