"""Query benchmark: the user-facing read paths on a generated, compacted DB.

    .venv/bin/python bench/bench_query.py                         # 10M readings, 1,000 series
    .venv/bin/python bench/bench_query.py --readings 2000000 --keep /tmp/q.db

Builds a DB of N readings over S series (1,000 devices' worth of gauges, one reading per
series every 10 s, values quantised to 0.01), inserted straight into the head in 100k-row
transactions (the fixture, not the thing measured), then compacted into blocks with
`collector.storage.sqlite.compactor.compact_once` the way the writer does in the background (every
closed head window into small blocks, every closed hour merged; the newest minute stays in the
head and the newest hour in small blocks). Then times, as medians of repeated runs on one
warm read-only connection:

- latest per series, all series: `query.resolve_series` + `query.latest` (what
  `telemetry query --latest` and GET /api/v1/latest run), and the bare `scan.latest`;
- 24 h of one series in 1-minute buckets: `query.aggregates(..., every=1m, agg=avg)`,
  and for contrast 1-hour buckets (answered from block summaries without decoding);
- 24 h of one series as raw readings (`query.readings`);
- the same two headline queries over HTTP (aiohttp routes on 127.0.0.1, urllib client).

The machine is shared: the minimum of the repeated runs shows what the code costs, the
median what a user saw at the time. Writes only to a temporary directory (or --keep PATH).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import statistics
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from aiohttp import web

from collector.query import readings as query
from collector.storage.sqlite import compactor, scan, store
from collector.storage.sqlite.backend import SQLiteStorage
from collector.web import api as http_api

S = 10**9
STEP_NS = 10 * S
T0_NS = 1_767_225_600 * S  # 2026-01-01T00:00:00Z
INSERT_ROWS = 100_000


def build(path: Path, readings: int, series: int) -> tuple[float, float, int]:
    """Create and fill the DB; returns (insert seconds, compaction seconds, end ts)."""
    store.migrate(path)
    conn = store.connect(path, synchronous="OFF")
    per_series = readings // series
    end_ns = T0_NS + per_series * STEP_NS
    t0 = time.perf_counter()
    conn.execute("BEGIN")
    for d in range(series):
        conn.execute(
            "INSERT INTO devices (id, name, token_hash, created_ns) VALUES (?, ?, 'x', ?)",
            (d + 1, f"dev-{d:04d}", T0_NS),
        )
        conn.execute(
            "INSERT INTO series (id, device_id, sensor, kind, unit) VALUES (?, ?, 'temp', "
            "'temperature', 'C')",
            (d + 1, d + 1),
        )
    conn.execute("COMMIT")

    def rows() -> Iterator[tuple[int, int, float, int]]:
        for i in range(per_series):
            ts = T0_NS + i * STEP_NS
            for sid in range(1, series + 1):
                yield ts + sid * 1_000, sid, round(20 + ((i + sid) % 500) / 100, 2), 3

    it = rows()
    while True:
        chunk = [r for _, r in zip(range(INSERT_ROWS), it, strict=False)]
        if not chunk:
            break
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO readings_head VALUES (?, ?, ?, ?)", chunk)
        conn.execute("COMMIT")
    last_i = per_series - 1
    conn.execute("BEGIN")
    conn.executemany(
        "UPDATE series SET first_ts = ?, last_ts = ?, last_value = ?, count = ? WHERE id = ?",
        [
            (
                T0_NS + sid * 1_000,
                T0_NS + last_i * STEP_NS + sid * 1_000,
                round(20 + ((last_i + sid) % 500) / 100, 2),
                per_series,
                sid,
            )
            for sid in range(1, series + 1)
        ],
    )
    conn.execute("UPDATE devices SET last_seen_ns = ?", (end_ns,))
    conn.execute("COMMIT")
    t_insert = time.perf_counter() - t0
    t0 = time.perf_counter()
    # "now" = the end of the data plus the grace period: every head window but the newest
    # is in small blocks and every hour but the newest merged, as on a live collector.
    now = end_ns + compactor.GRACE_NS
    while compactor.compact_once(conn, now):
        pass
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    t_compact = time.perf_counter() - t0
    conn.close()
    return t_insert, t_compact, end_ns


def timed(fn: Callable[[], object], runs: int) -> tuple[float, float, float, object]:
    """(first-run ms, median ms and min ms of the rest, last result)."""
    t0 = time.perf_counter()
    result = fn()
    first = (time.perf_counter() - t0) * 1e3
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return first, statistics.median(times), min(times), result


@contextmanager
def serve(db_path: Path) -> Iterator[str]:
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    base: list[str] = []
    stop_holder: list[asyncio.Event] = []

    async def main() -> None:
        stop = asyncio.Event()
        stop_holder.append(stop)
        app = web.Application()
        http_api.register(app, str(db_path))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base.append(f"http://127.0.0.1:{runner.addresses[0][1]}/api/v1")
        ready.set()
        await stop.wait()
        await runner.cleanup()

    t = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    t.start()
    ready.wait(10)
    try:
        yield base[0]
    finally:
        loop.call_soon_threadsafe(stop_holder[0].set)
        t.join(10)
        loop.close()


def get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=60) as resp:
        return json.loads(resp.read())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--readings", type=int, default=10_000_000)
    ap.add_argument("--series", type=int, default=1_000)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--keep", type=Path, help="Build (or reuse) the DB at this path.")
    ap.add_argument(
        "--device", default="dev-0500", help="the device whose series the 24 h queries read"
    )
    ap.add_argument("--sensor", help="with --device, the sensor of that one series")
    ap.add_argument(
        "--latest-sensor", help="latest of this sensor's series only (default: all series)"
    )
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory()
    path = args.keep or Path(tmp.name) / "bench.db"
    if path.exists():
        conn0 = store.connect(path, readonly=True)
        end_ns = conn0.execute("SELECT max(last_ts) FROM series").fetchone()[0] + 1
        conn0.close()
        t_insert = t_compact = float("nan")
    else:
        t_insert, t_compact, end_ns = build(path, args.readings, args.series)
    conn = store.connect(path, readonly=True)
    head, blocks = (
        conn.execute("SELECT count(*) FROM readings_head").fetchone()[0],
        conn.execute("SELECT count(*) FROM blocks").fetchone()[0],
    )
    total, n_series = conn.execute("SELECT sum(count), count(*) FROM series").fetchone()
    size = os.path.getsize(path)
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    used = page * (
        conn.execute("PRAGMA page_count").fetchone()[0]
        - conn.execute("PRAGMA freelist_count").fetchone()[0]
    )
    print(
        f"# machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}, {platform.platform()}"
    )
    print(
        f"# DB: {total:,} readings over {n_series:,} series; file {size / 2**20:.0f} MiB, "
        f"in use {used / 2**20:.1f} MiB ({used / total:.2f} B/reading; the rest is pages "
        f"compaction freed, no VACUUM); head rows {head:,}, blocks {blocks:,}"
    )
    if t_insert == t_insert:  # not NaN: built by this run
        print(f"# build: insert {t_insert:.1f} s, compaction {t_compact:.1f} s")
    else:
        print(f"# build: reused {path}")

    since = end_ns - 24 * 3600 * S
    st = SQLiteStorage(path, readonly=True)
    sensors = (args.sensor,) if args.sensor else ()
    one = query.resolve_series(st, query.Filters(devices=(args.device,), sensors=sensors))
    if len({s.id for s in one}) != 1:
        ap.error(f"--device/--sensor select {len(one)} series, not one")
    latest_filter = query.Filters(sensors=(args.latest_sensor,) if args.latest_sensor else ())
    some = query.resolve_series(st, latest_filter)
    label = f"{len(some):,} series" + (f" ({args.latest_sensor})" if args.latest_sensor else "")
    cases: list[tuple[str, Callable[[], object]]] = [
        (f"latest, {label}: scan.latest", lambda: scan.latest(conn, [s.id for s in some])),
        (
            f"latest, {label}: resolve_series + query.latest",
            lambda: query.latest(st, query.resolve_series(st, latest_filter)),
        ),
        (
            "24 h of one series, 1-minute buckets (avg)",
            lambda: list(query.aggregates(st, one, since, end_ns, 60 * S, "avg")),
        ),
        (
            "24 h of one series, 1-hour buckets (avg, block summaries)",
            lambda: list(query.aggregates(st, one, since, end_ns, 3600 * S, "avg")),
        ),
        (
            "24 h of one series, raw readings",
            lambda: list(query.readings(st, one, since, end_ns)),
        ),
    ]
    print("| query | rows | first run ms | median ms | min ms |")
    print("|---|---:|---:|---:|---:|")
    for name, fn in cases:
        first, med, low, result = timed(fn, args.runs)
        n = len(result) if isinstance(result, list) else "-"
        print(f"| {name} | {n} | {first:.1f} | {med:.1f} | {low:.1f} |")
    sensor_q = f"&sensor={args.sensor}" if args.sensor else ""
    latest_q = f"?sensor={args.latest_sensor}" if args.latest_sensor else ""
    with serve(path) as base:
        http_cases = [
            (f"HTTP GET /latest, {label}", f"{base}/latest{latest_q}"),
            (
                "HTTP GET /aggregate, 24 h of one series, 1-minute buckets",
                f"{base}/aggregate?device={args.device}{sensor_q}&every=1m&agg=avg&since=@{since}"
                f"&until=@{end_ns}&limit=10000",
            ),
        ]
        for name, url in http_cases:
            first, med, low, result = timed(partial(get, url), args.runs)
            assert isinstance(result, dict)
            n = len(next(v for v in result.values() if isinstance(v, list)))
            print(f"| {name} | {n} | {first:.1f} | {med:.1f} | {low:.1f} |")
    conn.close()
    tmp.cleanup()


if __name__ == "__main__":
    main()
