"""Head inserts from a thread that shares the GIL with a busy one: executemany vs multi-row.

The collector's writer thread inserts each batch's readings while the event loop thread
decodes and validates the next batches. sqlite3's `executemany` releases and takes back the
GIL around every row, so each row can wait for the other thread; a multi-row
`INSERT ... VALUES (...), (...)` (collector.storage.sqlite.bulkinsert) releases it once per
statement.

    python bench/bench_insert_gil.py                # both ways, alone and beside a busy thread
    python bench/bench_insert_gil.py --batches 2000
    python bench/bench_insert_gil.py --savepoints   # 40 batches per transaction, with and
                                                    # without a savepoint around each batch

Writes 496-reading batches of 8 series from 1,000 devices at scattered timestamps (a
backfill) into a head table like collector.storage.sqlite.store's, one transaction per batch, WAL,
synchronous=NORMAL, in a temporary directory. The busy thread runs pure Python with a
`time.sleep(0)` every 1,000 steps, like an event loop between syscalls. Nothing here is used
by the product.
"""

from __future__ import annotations

import argparse
import platform
import random
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

from collector.storage.sqlite import store
from collector.storage.sqlite.bulkinsert import BulkInsert

S = 10**9
BATCH = 496
SINGLE = f"INSERT OR IGNORE INTO {store.HEAD} (ts, series_id, value, lag_ms) VALUES (?, ?, ?, ?)"
MULTI = BulkInsert(f"INSERT OR IGNORE INTO {store.HEAD} (ts, series_id, value, lag_ms)", 4)


def _busy(stop: threading.Event) -> None:
    x = 0
    while not stop.is_set():
        for i in range(1_000):
            x += i * i
        time.sleep(0)


def _run(path: Path, how: str, busy: bool, batches: int) -> float:
    store.migrate(path)
    conn = store.connect(path, synchronous="NORMAL")
    stop = threading.Event()
    other = threading.Thread(target=_busy, args=(stop,), daemon=True)
    if busy:
        other.start()
    rnd = random.Random(1)
    base = 1_600_000_000 * S
    t0 = time.perf_counter()
    for b in range(batches):
        dev = rnd.randrange(1_000)
        t = base + b * 10_000_000 + dev * 1_000
        rows = [(t + j // 8 * 10 * S, dev * 8 + j % 8, 20.5 + j, 5) for j in range(BATCH)]
        conn.execute("BEGIN IMMEDIATE")
        if how == "executemany":
            conn.executemany(SINGLE, rows)
        else:
            MULTI(conn, rows)
        conn.execute("COMMIT")
    rate = batches * BATCH / (time.perf_counter() - t0)
    stop.set()
    if busy:
        other.join()
    conn.close()
    return rate


def _run_grouped(path: Path, savepoints: bool, batches: int) -> float:
    """Multi-row inserts, 40 batches per FULL transaction (a group commit), optionally each
    batch in a savepoint (its first change to a page copies the page)."""
    store.migrate(path)
    conn = store.connect(path)
    rnd = random.Random(1)
    base = 1_600_000_000 * S
    t0 = time.perf_counter()
    for g in range(0, batches, 40):
        conn.execute("BEGIN IMMEDIATE")
        for b in range(g, min(g + 40, batches)):
            dev = rnd.randrange(1_000)
            t = base + b * 10_000_000 + dev * 1_000
            rows = [(t + j // 8 * 10 * S, dev * 8 + j % 8, 20.5 + j, 5) for j in range(BATCH)]
            if savepoints:
                conn.execute("SAVEPOINT batch")
            MULTI(conn, rows)
            if savepoints:
                conn.execute("RELEASE batch")
        conn.execute("COMMIT")
    rate = batches * BATCH / (time.perf_counter() - t0)
    conn.close()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=4_000)
    ap.add_argument("--savepoints", action="store_true", help="savepoint per batch or not")
    args = ap.parse_args()
    if args.savepoints:
        with tempfile.TemporaryDirectory(prefix="bench-sp-") as tmp:
            print("| 40 batches per transaction | rows/s |")
            print("|---|---:|")
            for sp in (True, False):
                rate = _run_grouped(Path(tmp) / f"sp-{sp}.db", sp, args.batches)
                print(f"| {'a savepoint per batch' if sp else 'no savepoints'} | {rate:,.0f} |")
        return
    print(
        f"{platform.machine()}, Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
    )
    print("| insert | alone, rows/s | beside a busy thread, rows/s |")
    print("|---|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="bench-gil-") as tmp:
        for how in ("executemany", "multi-row"):
            rates = [
                _run(Path(tmp) / f"{how}-{busy}.db", how, busy, args.batches)
                for busy in (False, True)
            ]
            print(f"| {how} | {rates[0]:,.0f} | {rates[1]:,.0f} |")


if __name__ == "__main__":
    main()
