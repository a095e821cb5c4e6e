"""Builders for query tests: a real SQLite file filled the way the collector's writer fills it.

Rows go in exactly as `collector.ingest.writer` stores them (series key with the kind's default
unit, one series per composite field, INSERT OR IGNORE on (ts, series_id), series stats and
devices.last_seen_ns in the same transaction), so the query layer sees the real layout.
Also holds a helper that serves the HTTP API on 127.0.0.1 port 0 in a background thread.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack
from aiohttp import web

from collector.storage.sqlite import store
from collector.storage.sqlite.backend import SQLiteStorage
from collector.web import api as http_api
from schemas.kinds import BUILTIN_KINDS

_DEFAULT_UNIT = {k.name: k.default_unit or "" for k in BUILTIN_KINDS}
T0 = 1_764_000_000 * 1_000_000_000  # 2025-11-24T16:00:00Z, a round minute
S = 1_000_000_000
MIN = 60 * S


class Db:
    """A migrated DB file plus a write connection that inserts like the writer does."""

    def __init__(self, path: Path) -> None:
        self.path = path
        store.migrate(path)
        self.conn = store.connect(path)
        self._devices: dict[str, int] = {}

    def close(self) -> None:
        self.conn.close()

    def device(self, name: str) -> int:
        if name not in self._devices:
            cur = self.conn.execute(
                f"INSERT INTO {store.DEVICES} (name, token_hash, created_ns) VALUES (?, 'x', ?)",
                (name, T0),
            )
            assert cur.lastrowid is not None
            self._devices[name] = cur.lastrowid
        return self._devices[name]

    def series_id(
        self,
        device: str,
        sensor: str,
        kind: str,
        *,
        unit: str | None = None,
        tags: Mapping[str, str] | None = None,
        field: str = "",
    ) -> int:
        dev = self.device(device)
        key = (
            dev,
            sensor,
            field,
            kind,
            unit if unit is not None else _DEFAULT_UNIT.get(kind, ""),
            json.dumps(dict(tags or {}), sort_keys=True, separators=(",", ":")),
        )
        self.conn.execute(
            f"INSERT OR IGNORE INTO {store.SERIES} (device_id, sensor, field, kind, unit, tags) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            key,
        )
        row = self.conn.execute(
            f"SELECT id FROM {store.SERIES} WHERE device_id=? AND sensor=? AND field=? "
            "AND kind=? AND unit=? AND tags=?",
            key,
        ).fetchone()
        return int(row[0])

    def add(
        self,
        device: str,
        sensor: str,
        kind: str,
        points: Sequence[tuple[int, object]],
        *,
        unit: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Insert readings (ts_ns, value) in one transaction; dict values are composite."""
        self.conn.execute("BEGIN IMMEDIATE")
        for ts, value in points:
            fields = sorted(value.items()) if isinstance(value, dict) else [("", value)]
            for fname, v in fields:
                sid = self.series_id(device, sensor, kind, unit=unit, tags=tags, field=fname)
                cur = self.conn.execute(
                    f"INSERT OR IGNORE INTO {store.HEAD} (ts, series_id, value, lag_ms) "
                    "VALUES (?, ?, ?, 5)",
                    (ts, sid, v),
                )
                if cur.rowcount == 1:
                    self.conn.execute(
                        f"UPDATE {store.SERIES} SET first_ts = min(coalesce(first_ts, ?1), ?1), "
                        "last_value = CASE WHEN last_ts IS NULL OR ?1 >= last_ts THEN ?2 "
                        "ELSE last_value END, last_ts = max(coalesce(last_ts, ?1), ?1), "
                        "count = count + 1 WHERE id = ?3",
                        (ts, v, sid),
                    )
            self.conn.execute(
                f"UPDATE {store.DEVICES} SET last_seen_ns = max(coalesce(last_seen_ns, 0), ?) "
                "WHERE id = ?",
                (ts, self.device(device)),
            )
        self.conn.execute("COMMIT")

    def reject(
        self, device: str, reading: object, *, code: str = "unknown_kind", received_ns: int = T0
    ) -> int:
        cur = self.conn.execute(
            f"INSERT INTO {store.REJECTED} (device_id, received_ns, seq, idx, raw, reading, "
            "code, path, message) VALUES (?, ?, 1, 0, ?, ?, ?, 'kind', 'rejected')",
            (
                self.device(device),
                received_ns,
                msgpack.packb(reading, use_bin_type=True),
                json.dumps(reading),
                code,
            ),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def count_head(self) -> int:
        return int(self.conn.execute(f"SELECT count(*) FROM {store.HEAD}").fetchone()[0])


def standard_db(path: Path) -> Db:
    """Two greenhouses, a pump and a GPS tracker: every kind of value the layer handles."""
    db = Db(path)
    for i, dev in enumerate(("greenhouse-1", "greenhouse-2")):
        db.add(
            dev,
            "air-temp",
            "temperature",
            [(T0 + k * 30 * S, 20.0 + i + k * 0.5) for k in range(10)],
            tags={"zone": f"z{i + 1}"},
        )
        db.add(dev, "humidity", "humidity", [(T0 + k * MIN, 50.0 + k) for k in range(5)])
    db.add("pump-1", "running", "state", [(T0 + k * MIN, k % 2 == 0) for k in range(4)])
    db.add("pump-1", "cycles", "counter", [(T0 + k * MIN, k * 10) for k in range(4)])
    db.add(
        "tracker-1",
        "gps",
        "gps",
        [(T0 + k * MIN, {"lat": 52.0 + k / 100, "lon": 13.0 + k / 100}) for k in range(3)],
    )
    return db


def readonly(path: Path) -> sqlite3.Connection:
    return store.connect(path, readonly=True)


def read_storage(path: Path) -> SQLiteStorage:
    """The file as the query layer reads it: a read-only storage."""
    return SQLiteStorage(path, readonly=True)


@contextmanager
def serve_api(
    db_path: Path,
    *,
    token: str | None = None,
    extra: Callable[[web.Application], None] | None = None,
) -> Iterator[str]:
    """Serve the query routes on 127.0.0.1:<free port> in a thread; yields the base URL."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop: asyncio.Event | None = None
    base: list[str] = []

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        app = web.Application()
        http_api.register(app, str(db_path), token=token)
        if extra is not None:
            extra(app)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        base.append(f"http://127.0.0.1:{port}")
        ready.set()
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    assert ready.wait(10), "API server did not start"
    try:
        yield base[0]
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def get_json(url: str, token: str | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())
