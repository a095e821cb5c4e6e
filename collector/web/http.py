"""The collector's HTTP side (aiohttp, same process and loop as the ingest server).

Routes here: `/healthz` (the process is up), `/readyz` (writer running and ingest listening),
`/metrics` (Prometheus text: the in-process counters and what the file holds,
`Storage.stats`), `/api/v1/metrics` (the same numbers as JSON, for the
dashboard) and `/api/v1/devices` (registry + last seen + connected). Other modules add routes
through route-registering callables passed to `create_app`; the query API (`collector.web.api`)
adds the other /api/v1 routes, and its read token (when set) covers /api/v1/devices and
/api/v1/metrics too; the dashboard (`collector.web.dashboard`) adds `/` under the same token.
/healthz, /readyz and /metrics stay open, for health checks and scrapers.

Handlers never touch the write connection: database reads use their own read-only
connection in a worker thread (`asyncio.to_thread`), so the loop never blocks on SQLite.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from aiohttp import web

from collector.storage.interface import Device, Filters, Storage, StorageError, StorageStats
from collector.web import api as http_api
from collector.web import dashboard
from collector.web.metrics import Histogram, Metrics

log = logging.getLogger(__name__)

RouteRegistrar = Callable[[web.Application], None]
PROMETHEUS_CONTENT_TYPE: Final = "text/plain"
# Reading the storage gauges walks the head (~15 ms for a live head of 150,000 rows): JSON
# readers (dashboards refreshing every few seconds, however many are open) share one read per
# this many seconds.
STORAGE_CACHE_S: Final = 2.0


@dataclass(frozen=True, slots=True)
class AppState:
    """What the HTTP handlers may see of the running daemon."""

    db_path: Path
    metrics: Metrics
    connected: Callable[[], dict[str, int]]
    ready: Callable[[], bool]
    read_token: str | None = None
    # More Prometheus text for /metrics: the foreign inputs' counters (collector/inputs/).
    more_metrics: Callable[[], str] | None = None
    # The storage to read (the daemon's); None: the one `db_path` names, opened read-only.
    storage: Storage | None = None
    # The counters of every ingest process added up (`--ingest-workers`); None: `metrics`.
    totals: Callable[[], Metrics] | None = None

    def current_metrics(self) -> Metrics:
        """The counters /metrics and the device listing report."""
        return self.totals() if self.totals is not None else self.metrics


@dataclass(slots=True)
class _StorageCache:
    stats: StorageStats | None = None
    read_at: float = float("-inf")
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


STATE_KEY: Final = web.AppKey("telemetry_state", AppState)
_STORAGE_CACHE: Final = web.AppKey("telemetry_storage_cache", _StorageCache)
DEVICES_PATH: Final = "/api/v1/devices"
METRICS_JSON_PATH: Final = "/api/v1/metrics"


def create_app(state: AppState, routes: Sequence[RouteRegistrar] = ()) -> web.Application:
    """Build the aiohttp application: built-in routes, `routes`, the query API, devices."""
    app = web.Application()
    app[STATE_KEY] = state
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    for register in routes:
        register(app)
    http_api.register(
        app,
        state.storage if state.storage is not None else str(state.db_path),
        token=state.read_token,
    )
    # Registered after the query API so its read-token check covers these routes too.
    app.router.add_get(DEVICES_PATH, http_api.guard(_devices))
    app.router.add_get(METRICS_JSON_PATH, http_api.guard(_metrics_json))
    app[_STORAGE_CACHE] = _StorageCache()
    dashboard.register(app, token=state.read_token)
    return app


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    ready = request.app[STATE_KEY].ready()
    return web.json_response(
        {"status": "ready" if ready else "not ready"}, status=200 if ready else 503
    )


async def _read_storage(app: web.Application) -> StorageStats | None:
    try:
        return await asyncio.to_thread(lambda: http_api.storage_of(app).stats())
    except (StorageError, OSError) as exc:
        # The counters still help; the storage gauges are left out until the file reads.
        log.warning("metrics: cannot read the database error=%s", exc)
        return None


async def _metrics(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    storage = await _read_storage(request.app)
    text = state.current_metrics().render(storage)
    if state.more_metrics is not None:
        text += state.more_metrics()
    return web.Response(text=text, content_type=PROMETHEUS_CONTENT_TYPE, charset="utf-8")


async def _cached_storage(request: web.Request) -> StorageStats | None:
    cache = request.app[_STORAGE_CACHE]
    async with cache.lock:  # concurrent readers wait for one read instead of each reading
        if time.monotonic() - cache.read_at >= STORAGE_CACHE_S:
            cache.stats = await _read_storage(request.app)
            cache.read_at = time.monotonic()
        return cache.stats


def _histogram(h: Histogram) -> dict[str, object]:
    return {
        "count": h.count,
        "sum": h.total,
        "buckets": [[bound, n] for bound, n in zip(h.buckets, h.counts, strict=False)],
        "over": h.counts[-1],
    }


def metrics_json(m: Metrics, storage: StorageStats | None, now_ns: int) -> dict[str, object]:
    """The numbers of /metrics as one JSON object (counters since start; gauges now).

    `compaction_lag_s`: how far the head's oldest reading lies behind `now_ns` (null when
    the head is empty or the file could not be read).
    """
    lag = None
    if storage is not None and storage.head_oldest_ns is not None:
        lag = max(0.0, (now_ns - storage.head_oldest_ns) / 1e9)
    return {
        "now_ns": now_ns,
        "connections": {
            "open": m.connections_open,
            "total": m.connections_total,
            "refused": dict(m.connections_refused),
        },
        "batches": m.batches,
        "readings": {"accepted": m.accepted, "rejected": m.rejected, "duplicate": m.duplicate},
        "retries": m.retries,
        "bad_frames": m.bad_frames,
        "bytes_in": m.bytes_in,
        "commits": m.commits,
        "commit_seconds": _histogram(m.commit_seconds),
        "batch_seconds": _histogram(m.batch_seconds),
        "writer_queue_depth": m.queue_depth(),
        "maintainer_restarts": m.maintainer_restarts(),
        "storage": None
        if storage is None
        else {
            "head_rows": storage.head_rows,
            "head_oldest_ns": storage.head_oldest_ns,
            "blocks": storage.blocks,
            "small_blocks": storage.small_blocks,
            "db_bytes": storage.db_bytes,
            "wal_bytes": storage.wal_bytes,
            "free_bytes": storage.free_bytes,
        },
        "compaction_lag_s": lag,
    }


async def _metrics_json(request: web.Request) -> web.Response:
    storage = await _cached_storage(request)
    body = metrics_json(request.app[STATE_KEY].current_metrics(), storage, time.time_ns())
    return web.json_response(body)


def _iso(ns: int | None) -> str | None:
    if ns is None:
        return None
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC).isoformat().replace("+00:00", "Z")


def _read_devices(storage: Storage) -> tuple[list[Device], dict[str, int]]:
    rows = storage.list_devices()
    totals: dict[str, int] = {}
    for s in storage.resolve_series(Filters()):
        totals[s.device] = totals.get(s.device, 0) + s.count
    return rows, totals


async def _devices(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        rows, totals = await asyncio.to_thread(
            lambda: _read_devices(http_api.storage_of(request.app))
        )
    except (sqlite3.Error, StorageError, OSError) as exc:
        return web.json_response({"error": f"database unavailable: {exc}"}, status=503)
    connected = state.connected()
    per_device = state.current_metrics().devices
    out = []
    for d in rows:
        stats = per_device.get(d.name)
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
                "readings_total": int(totals.get(d.name) or 0),
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
    # The collector's clock, so a page can tell a last-seen age without trusting its own.
    return web.json_response({"devices": out, "now_ns": time.time_ns()})
