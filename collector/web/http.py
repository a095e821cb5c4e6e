"""The collector's HTTP side (aiohttp, same process and loop as the ingest server).

Routes here: `/healthz` (the process is up), `/readyz` (writer running and ingest listening),
`/metrics` (Prometheus text: the in-process counters and what the file holds,
collector.storage.sqlite.storagestats) and `/api/v1/devices` (registry + last seen + connected).
Other modules add routes through route-registering callables passed to `create_app`; the query
API (`collector.web.api`) adds the other /api/v1 routes, and its read token (when set)
covers /api/v1/devices too. /healthz, /readyz and /metrics stay open, for health checks and
scrapers.

Handlers never touch the write connection: database reads use their own read-only
connection in a worker thread (`asyncio.to_thread`), so the loop never blocks on SQLite.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aiohttp import web

from collector.storage.sqlite import devices, storagestats, store
from collector.web import api as http_api
from collector.web.metrics import Metrics

log = logging.getLogger(__name__)

RouteRegistrar = Callable[[web.Application], None]
PROMETHEUS_CONTENT_TYPE: Final = "text/plain"


@dataclass(frozen=True, slots=True)
class AppState:
    """What the HTTP handlers may see of the running daemon."""

    db_path: Path
    metrics: Metrics
    connected: Callable[[], dict[str, int]]
    ready: Callable[[], bool]
    read_token: str | None = None


STATE_KEY: Final = web.AppKey("telemetry_state", AppState)
DEVICES_PATH: Final = "/api/v1/devices"


def create_app(state: AppState, routes: Sequence[RouteRegistrar] = ()) -> web.Application:
    """Build the aiohttp application: built-in routes, `routes`, the query API, devices."""
    app = web.Application()
    app[STATE_KEY] = state
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    for register in routes:
        register(app)
    http_api.register(app, str(state.db_path), token=state.read_token)
    # Registered after the query API so its read-token check covers this route too.
    app.router.add_get(DEVICES_PATH, http_api.guard(_devices))
    return app


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    ready = request.app[STATE_KEY].ready()
    return web.json_response(
        {"status": "ready" if ready else "not ready"}, status=200 if ready else 503
    )


async def _metrics(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        storage = await asyncio.to_thread(storagestats.read, state.db_path)
    except (sqlite3.Error, OSError) as exc:
        # The counters still help; the storage gauges are left out until the file reads.
        log.warning("metrics: cannot read the database error=%s", exc)
        storage = None
    text = state.metrics.render(storage)
    return web.Response(text=text, content_type=PROMETHEUS_CONTENT_TYPE, charset="utf-8")


def _iso(ns: int | None) -> str | None:
    if ns is None:
        return None
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC).isoformat().replace("+00:00", "Z")


def _read_devices(path: Path) -> tuple[list[devices.Device], dict[int, int]]:
    conn = store.connect(path, readonly=True)
    try:
        rows = devices.list_devices(conn)
        totals = dict(
            conn.execute(
                f"SELECT device_id, sum(count) FROM {store.SERIES} GROUP BY device_id"
            ).fetchall()
        )
        return rows, totals
    finally:
        conn.close()


async def _devices(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        rows, totals = await asyncio.to_thread(_read_devices, state.db_path)
    except sqlite3.Error as exc:
        return web.json_response({"error": f"database unavailable: {exc}"}, status=503)
    connected = state.connected()
    out = []
    for d in rows:
        stats = state.metrics.devices.get(d.name)
        out.append(
            {
                "device": d.name,
                "id": d.id,
                "created": _iso(d.created_ns),
                "revoked": _iso(d.revoked_ns),
                "last_seq": d.last_seq,
                "last_seen_ns": d.last_seen_ns,
                "last_seen": _iso(d.last_seen_ns),
                "connected": connected.get(d.name, 0) > 0,
                "connections": connected.get(d.name, 0),
                "readings_total": int(totals.get(d.id) or 0),
                "spool_dropped": d.spool_dropped,
                "since_start": {
                    "batches": stats.batches if stats else 0,
                    "accepted": stats.accepted if stats else 0,
                    "rejected": stats.rejected if stats else 0,
                    "duplicate": stats.duplicate if stats else 0,
                    "retries": stats.retries if stats else 0,
                    "bytes_in": stats.bytes_in if stats else 0,
                },
            }
        )
    return web.json_response({"devices": out})
