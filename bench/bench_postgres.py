"""PostgreSQL backend benchmark: durable store rate, reads, and bytes per reading.

    .venv/bin/python bench/bench_postgres.py                       # 1M readings
    .venv/bin/python bench/bench_postgres.py --readings 3000000 --insert-methods
    .venv/bin/python bench/bench_postgres.py --url postgresql://user@host/db  # an empty db

Without --url it creates a throwaway database `telemetry_bench_<random>` on the local server
(postgresql://postgres@127.0.0.1:5432/test, or TELEMETRY_TEST_PG) and drops it at the end.

1. Store: readings of 1,000 series (100 devices x 10 sensors, one reading per series every
   STEP seconds, chosen so that the data spans at least 24 h) are prepared by
   `collector.ingest.prepare` up front (not timed), then stored through
   `PostgresStorage.store` in groups of 5,000 readings (one transaction each, durable:
   synchronous_commit on), one connection. Rates are given per slice of the run, to show
   whether ingest holds as the table grows.
2. Reads, as medians (and minimum) of repeated runs: `latest` of the 1,000 series,
   `resolve_series` + `latest`, and 24 h of one series and of all 1,000 in 1-minute
   buckets (`aggregate`, avg), plus 1 h of all series' raw readings (`read_range`).
3. Size: pg_total_relation_size of every partition of `readings` (heap, index, TOAST) per
   stored reading, and of series + latest.
4. With --insert-methods: the two ways of moving a group into the partitioned table, on a
   scratch database: COPY into a temporary table then INSERT ... SELECT ... ON CONFLICT DO
   NOTHING RETURNING (what the backend does), and a pipelined executemany of INSERT ... ON
   CONFLICT DO NOTHING RETURNING.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg

from collector.ingest.prepare import Ingest
from collector.storage.interface import Filters, PreparedBatch
from collector.storage.postgres.backend import PostgresStorage
from collector.storage.postgres.ingest import value_columns
from tests.storage.pgserver import maintenance_url, throwaway_database

S = 10**9
T0_NS = 1_767_225_600 * S  # 2026-01-01T00:00:00Z
DEVICES = 100
SENSORS = 10
GROUP_READINGS = 5_000
DAY_S = 86_400


def batches(readings: int, step_s: int, ingest: Ingest) -> Iterator[tuple[int, PreparedBatch]]:
    """(device id, batch) of GROUP_READINGS // DEVICES readings each: every series' next
    GROUP_READINGS // (DEVICES * SENSORS) readings, devices interleaved."""
    per_batch = GROUP_READINGS // DEVICES
    per_series = per_batch // SENSORS
    rounds = readings // (DEVICES * SENSORS * per_series)
    for r in range(rounds):
        for dev in range(1, DEVICES + 1):
            rows: list[object] = []
            for k in range(per_series):
                ts = T0_NS + (r * per_series + k) * step_s * S
                for sensor in range(SENSORS):
                    value = round(20 + (dev * 7 + sensor * 3 + r + k) % 100 * 0.1, 2)
                    rows.append([f"s{sensor}", "gauge", ts, value, "C", None])
            yield dev, ingest.prepare(r + 1, rows, ts)


def fill(pg: PostgresStorage, readings: int, step_s: int) -> list[tuple[int, float]]:
    """Store `readings`; returns (readings so far, rate of the slice) per ~10% slice."""
    ingest = Ingest.from_kinds()
    devs = [pg.add_device(f"dev-{i:03d}", T0_NS)[0].id for i in range(1, DEVICES + 1)]
    assert devs == list(range(1, DEVICES + 1))
    slices: list[tuple[int, float]] = []
    done = slice_done = 0
    slice_s = 0.0  # store time only: preparing a group is not timed
    groups = readings // GROUP_READINGS
    every = max(1, groups // 10)
    group: list[tuple[int, PreparedBatch]] = []
    n = 0
    for item in batches(readings, step_s, ingest):
        group.append(item)
        if len(group) < DEVICES:  # one group = one batch of every device
            continue
        t = time.perf_counter()
        out = pg.store(group)
        slice_s += time.perf_counter() - t
        group = []
        n += 1
        done += sum(o.accepted for o in out.outcomes)
        if n % every == 0 or n == groups:
            slices.append((done, (done - slice_done) / slice_s))
            slice_done, slice_s = done, 0.0
    return slices


def timed(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    """(median, min) wall seconds of `runs` calls."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


def sizes(url: str) -> tuple[int, int, int]:
    """(bytes of readings' partitions, readings stored, bytes of series + latest)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        row = conn.execute(
            "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits "
            "WHERE inhparent = 'readings'::regclass"
        ).fetchone()
        count = conn.execute("SELECT count(*) FROM readings").fetchone()
        other = conn.execute(
            "SELECT pg_total_relation_size('series') + pg_total_relation_size('latest')"
        ).fetchone()
    assert row and count and other
    return int(row[0]), int(count[0]), int(other[0])


def insert_methods(url: str, seconds: float) -> dict[str, float]:
    """Rows/s of COPY + INSERT ... SELECT vs pipelined executemany, 5,000-row transactions."""
    pg = PostgresStorage(url, now_ns=T0_NS)
    pg.close()
    out: dict[str, float] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.transaction():
            conn.execute(
                "CREATE TEMP TABLE stage (ts bigint, series_id integer, i bigint, "
                "f double precision, t text, b bytea) ON COMMIT DELETE ROWS"
            )
        base = 0
        for method in ("copy", "executemany"):
            rows = 0
            start = time.perf_counter()
            while time.perf_counter() - start < seconds:
                group = [
                    (T0_NS + (base + k // 1_000) * S, k % 1_000 + 1, *value_columns(0.5 * k))
                    for k in range(GROUP_READINGS)
                ]
                base += GROUP_READINGS // 1_000
                with conn.transaction(), conn.cursor() as cur:
                    if method == "copy":
                        with cur.copy("COPY stage (ts, series_id, i, f, t, b) FROM STDIN") as cp:
                            for r in group:
                                cp.write_row(r)
                        cur.execute(
                            "INSERT INTO readings SELECT ts, series_id, i, f, t, b FROM stage "
                            "ON CONFLICT DO NOTHING RETURNING series_id, ts"
                        )
                        new = len(cur.fetchall())
                    else:
                        cur.executemany(
                            "INSERT INTO readings (ts, series_id, i, f, t, b) "
                            "VALUES (%s, %s, %s, %s, %s, %s) "
                            "ON CONFLICT DO NOTHING RETURNING series_id",
                            group,
                            returning=True,
                        )
                        new = 0
                        while True:
                            new += len(cur.fetchall())
                            if not cur.nextset():
                                break
                assert new == GROUP_READINGS
                rows += new
            out[method] = rows / (time.perf_counter() - start)
    return out


@contextmanager
def database(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    if maintenance_url() is None:
        raise SystemExit("no PostgreSQL at 127.0.0.1:5432: start one or pass --url")
    with throwaway_database() as u:
        yield u


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--readings", type=int, default=1_000_000)
    ap.add_argument("--url", help="an empty database (default: a throwaway one)")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--insert-methods", action="store_true")
    args = ap.parse_args()
    series = DEVICES * SENSORS
    step_s = max(1, DAY_S * series // max(1, args.readings))
    step_s = min(step_s, 60)
    with database(args.url) as url:
        pg = PostgresStorage(url, now_ns=T0_NS)
        try:
            with psycopg.connect(url) as conn:
                version = conn.execute("SHOW server_version").fetchone()
            print(
                f"# PostgreSQL {version[0] if version else '?'}, {platform.python_version()}, "
                f"{os.cpu_count()} cores; {args.readings:,} readings, {series:,} series, "
                f"one per series every {step_s} s, groups of {GROUP_READINGS:,}"
            )
            slices = fill(pg, args.readings, step_s)
            stored = slices[-1][0] if slices else 0
            total_s = sum((b[0] - a[0]) / b[1] for a, b in itertools.pairwise([(0, 1.0), *slices]))
            print(
                f"store: {stored:,} readings in {total_s:.1f} s of store calls = "
                f"{stored / total_s:,.0f}/s"
            )
            for done, rate in slices:
                print(f"  up to {done:>11,}: {rate:>9,.0f} readings/s")
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("ANALYZE")  # as autovacuum would have by now
            ids = [s.id for s in pg.resolve_series(Filters())]
            end = T0_NS + (stored // series) * step_s * S
            day = (end - DAY_S * S, end)
            queries: dict[str, Callable[[], object]] = {
                "latest, 1,000 series": lambda: pg.latest(ids),
                "resolve_series + latest": lambda: pg.latest(
                    [s.id for s in pg.resolve_series(Filters())]
                ),
                "24 h, 1 series, 1-min avg": lambda: list(
                    pg.aggregate(ids[:1], *day, 60 * S, "avg")
                ),
                "24 h, 1,000 series, 1-min avg": lambda: list(
                    pg.aggregate(ids, *day, 60 * S, "avg")
                ),
                "1 h raw, 1,000 series": lambda: list(pg.read_range(ids, end - 3_600 * S, end)),
            }
            for name, fn in queries.items():
                med, lo = timed(fn, args.runs)
                print(f"{name:<32} median {med * 1e3:9.1f} ms   min {lo * 1e3:9.1f} ms")
        finally:
            pg.close()
        part, count, other = sizes(url)
        print(
            f"size: readings {part / 2**20:,.1f} MiB for {count:,} = {part / max(1, count):.1f} "
            f"bytes/reading; series + latest {other / 2**10:,.0f} KiB"
        )
    if args.insert_methods:
        with database(None) as url:  # a fresh one: the scratch rows would collide
            rates = insert_methods(url, 8.0)
        for method, rate in rates.items():
            print(f"insert method {method:<12} {rate:>9,.0f} rows/s (5,000-row transactions)")


if __name__ == "__main__":
    main()
