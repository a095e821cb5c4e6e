"""CPU the maintenance process spends per reading to compact a backlog, level by level.

Fills the head of a temporary database with a backlog shaped like bench/load.py's --total
mode (1,000 devices x 8 sensors, one reading per sensor every 10 s of device time, the same
value generator), then runs collector.storage.sqlite.compactor the way the maintenance process does
once every window is closed and settled: first the head (slots of five windows into small
blocks), then the hourly merges, then giving free pages back. Reports the process CPU time
per reading of each level and the bytes per reading afterwards: the file, its pages in use,
the file after VACUUM, and the block payloads alone.

    python -m bench.bench_compaction                 # 2 hours of device time, 5.76M readings
    python -m bench.bench_compaction --hours 0.5 --devices 200
    python -m bench.bench_compaction --codec v1      # hour blocks in version 1, as before v3
    python -m bench.bench_compaction --interleaved   # compact as the data arrives

Compacting as the data arrives costs ~0.7 µs per reading more than the backlog: live windows
close one at a time and each becomes its own small block, five times the blocks a backlog's
10-minute slots make, each ~11 µs to insert, read back, decode and delete in the hour's merge
whatever it holds (docs/benchmarks-history.md, "Interleaved compaction").

This is the cost the end-to-end run (bench/load.py --total) pays once windows start to settle,
on the cores the load generators and the ingest daemon share. Nothing here is used by the
product.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.load import DEVICE_SENSORS, DeviceClock
from collector.storage.sqlite import blocks, compactor, store
from collector.storage.sqlite.store import BLOCKS, HEAD, SERIES

S = 10**9
T0_NS = 1_767_225_600 * S  # 2026-01-01T00:00:00Z


def _fill(
    conn: sqlite3.Connection,
    devices: int,
    hours: float,
    after: Callable[[int], object] = lambda _end_ns: None,
) -> int:
    """Insert the backlog five minutes of device time per transaction; `after(end_ns)` runs
    after each one (the interleaved mode compacts there)."""
    conn.executemany(
        "INSERT INTO devices (id, name, token_hash, created_ns) VALUES (?, ?, 'x', 0)",
        [(d, f"dev{d}") for d in range(1, devices + 1)],
    )
    conn.executemany(
        f"INSERT INTO {SERIES} (id, device_id, sensor, kind, unit) VALUES (?, ?, ?, ?, ?)",
        [
            (d * len(DEVICE_SENSORS) + i + 1, d + 1, name, kind, unit or "")
            for d in range(devices)
            for i, (name, kind, unit) in enumerate(DEVICE_SENSORS)
        ],
    )
    args = argparse.Namespace(interval_s=10.0, t0_ns=T0_NS, connections=devices)
    clocks = [DeviceClock(d, args) for d in range(devices)]
    ticks = int(hours * 360)
    n = 0
    for tick in range(0, ticks, 30):  # five minutes of device time per transaction
        rows = []
        for d, clock in enumerate(clocks):  # device d + 1
            for i, (_s, _k, ts, value, _u, _m) in enumerate(clock.batch(30)):
                sid = d * len(DEVICE_SENSORS) + i % len(DEVICE_SENSORS) + 1
                rows.append((ts, sid, int(value) if type(value) is bool else value))
        conn.execute("BEGIN")
        conn.executemany(f"INSERT INTO {HEAD} (ts, series_id, value) VALUES (?, ?, ?)",
                         rows)  # fmt: skip
        conn.execute("COMMIT")
        n += len(rows)
        after(T0_NS + (tick + 30) * 10 * S)
    return n


def _noop(_end_ns: int) -> None:
    pass


def compact_as_live(conn: sqlite3.Connection, end_ns: int) -> int:
    """The compaction steps a live collector's maintenance process runs once the readings up
    to `end_ns` are stored; returns how many.

    A live collector's clock reads about the newest device time, so `end_ns` is "now": the
    windows closed then (ended a grace period before it) hold all their readings, each is
    compacted once, one at a time, and an hour is merged MERGE_GRACE_NS after it ends, while
    the next hour's windows go on. A clock ahead of the data (it was `end_ns` + MERGE_GRACE_NS
    until 2026-12) closes windows the next transaction still fills: one window in five was
    compacted half full and rewritten with its other half (decode + re-encode), ~0.25 µs per
    reading that a live collector does not spend.
    """
    steps = 0
    while compactor.compact_once(conn, end_ns):
        steps += 1
    return steps


def _head_rows(conn: sqlite3.Connection) -> int:
    return int(conn.execute(f"SELECT count(*) FROM {HEAD}").fetchone()[0])


def _head_holds_rows(conn: sqlite3.Connection) -> bool:
    """Whether the head holds a row (one seek: counting it after every step is quadratic)."""
    return conn.execute(f"SELECT 1 FROM {HEAD} LIMIT 1").fetchone() is not None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=1000, help="devices of 8 sensors each")
    ap.add_argument("--hours", type=float, default=2.0, help="device time in the backlog")
    ap.add_argument(
        "--codec",
        choices=("v3", "v1"),
        default="v3",
        help="hour blocks' format: v3 (pcodec, what the collector writes) or v1 (DEFLATE)",
    )
    ap.add_argument("--keep", type=Path, help="copy the compacted database here")
    ap.add_argument(
        "--interleaved",
        action="store_true",
        help="compact after every five minutes of device time, as a live collector does "
        "(its clock at the newest reading: windows one at a time, each once; small blocks of "
        "the next hour are written between the merge steps of the last), instead of once "
        "over the whole backlog; reports the CPU of all levels together",
    )
    args = ap.parse_args()
    if args.codec == "v1":
        # The version-1 encoder in place of `encode`, for before/after figures.
        blocks.encode = blocks.encode_deflate
        blocks.encode_column = lambda ts, column: blocks.encode_deflate(
            ts.tolist(), column.tolist()
        )
    with tempfile.TemporaryDirectory(prefix="bench-compaction-") as tmp:
        path = Path(tmp) / "compaction.db"
        store.migrate(path)
        conn = store.connect(path, synchronous="NORMAL")
        interleaved_cpu = [0.0, 0.0]  # CPU s, steps

        def compact_at(end_ns: int) -> None:
            c0 = time.process_time()
            interleaved_cpu[1] += compact_as_live(conn, end_ns)
            interleaved_cpu[0] += time.process_time() - c0

        n = _fill(conn, args.devices, args.hours, compact_at if args.interleaved else _noop)
        now = T0_NS + int(args.hours * 3600 * S) + 2 * compactor.MERGE_NS
        print(f"{n:,} readings of {args.devices * len(DEVICE_SENSORS):,} series, "
              f"{args.hours} h of device time, hour blocks {args.codec}; "
              f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
              f"{platform.machine()}")  # fmt: skip
        print("| level | steps | CPU s | µs/reading | wall s |")
        print("|---|---:|---:|---:|---:|")
        levels: list[tuple[str, Callable[[], object]]] = [
            (
                "head -> blocks",
                lambda: _head_holds_rows(conn) and compactor.compact_once(conn, now),
            ),
            ("hourly merges", lambda: compactor.compact_once(conn, now)),
            # No readings arrive here: the maintenance process gives them back in one pass.
            ("free pages back", lambda: store.reclaim_space(conn, at_once=True)),
        ]
        total = 0.0
        if args.interleaved:
            cpu, steps = interleaved_cpu
            print(f"| all levels, interleaved with the inserts | {steps:.0f} | {cpu:.2f} | "
                  f"{1e6 * cpu / n:.2f} | |")  # fmt: skip
            total += cpu
        for name, step in levels:
            c0, w0, steps = time.process_time(), time.perf_counter(), 0
            while step():
                steps += 1
            cpu = time.process_time() - c0
            total += cpu
            wall = time.perf_counter() - w0
            print(f"| {name} | {steps} | {cpu:.2f} | {1e6 * cpu / n:.2f} | {wall:.2f} |")
        print(f"| all | | {total:.2f} | {1e6 * total / n:.2f} | |")
        left = _head_rows(conn)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        nblocks, payload = conn.execute(
            f"SELECT count(*), sum(length(data)) FROM {BLOCKS}"
        ).fetchone()
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        by_version = conn.execute(
            f"SELECT unicode(data), count(*), sum(length(data)), sum(count) FROM {BLOCKS} "
            "GROUP BY 1"
        ).fetchall()
        size = path.stat().st_size
        if args.keep:
            shutil.copyfile(path, args.keep)
        # The free pages left are below store.reclaim_space's floor (2,048 pages): VACUUM
        # shows the file without them.
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        vacuumed = path.stat().st_size
        in_use = (size - free * page) / n
        print(f"head rows left {left}, blocks {nblocks:,}, {size / n:.2f} bytes per reading "
              f"(pages in use {in_use:.2f}, after VACUUM {vacuumed / n:.2f}, "
              f"block payloads {payload / n:.2f})")  # fmt: skip
        for version, count, nbytes, readings in by_version:
            print(
                f"  version {version}: {count:,} blocks, {nbytes / readings:.2f} B/reading payload"
            )


if __name__ == "__main__":
    main()
