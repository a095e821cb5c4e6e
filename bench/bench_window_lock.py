"""How long compacting one head window holds the write lock, phase by phase.

Fills a temporary database with head windows of 8,000 series x 12 readings (a 2-minute
window at one reading per 10 s, 96,000 rows) and compacts them the way the maintenance
process does (collector.storage.sqlite.compactor): read and encode with no lock held, then, under
the lock, check the blocks covering the window, delete the head rows (the DELETE's row count is the
check that none arrived meanwhile), insert the small blocks and commit. The time under the
lock is time the ingest writer waits (collector.storage.sqlite.maintainer.Turns).

    python bench/bench_window_lock.py                      # the process's setting
    python bench/bench_window_lock.py --synchronous FULL   # as the writer commits
    python bench/bench_window_lock.py --run-windows 5      # a backlog's 10-minute slots

Nothing here is used by the product.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import tempfile
import time
from operator import itemgetter
from pathlib import Path

from collector.storage.sqlite import compactor, store
from collector.storage.sqlite.blockwrites import covering_blocks, head_block_rows, insert_blocks

S = 10**9
SERIES = 8_000
PER_WINDOW = 12


def _fill(conn: sqlite3.Connection, windows: int) -> None:
    conn.execute("INSERT INTO devices (id, name, token_hash, created_ns) VALUES (1, 'd', 'x', 0)")
    conn.executemany(
        "INSERT INTO series (id, device_id, sensor, kind) VALUES (?, 1, ?, 'number')",
        [(i, f"s{i}") for i in range(1, SERIES + 1)],
    )
    rnd = random.Random(1)
    w = compactor.WINDOW_NS
    for k in range(windows):
        rows = [
            (k * w + j * 10 * S + sid * 1000, sid, round(rnd.uniform(0, 40), 2))
            for j in range(PER_WINDOW)
            for sid in range(1, SERIES + 1)
        ]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO readings_head (ts, series_id, value) VALUES (?, ?, ?)", rows)
        conn.execute("COMMIT")


def _compact(conn: sqlite3.Connection, start: int, span: int) -> dict[str, float]:
    cfg = compactor.DEFAULT_CONFIG
    end = start + span * compactor.WINDOW_NS
    marks = [time.perf_counter()]
    conn.execute("BEGIN")
    rows = conn.execute(
        "SELECT series_id, ts, value FROM readings_head WHERE ts >= ? AND ts < ?", (start, end)
    ).fetchall()
    rows.sort(key=itemgetter(0))
    existing = covering_blocks(conn, start, rows, cfg)
    conn.execute("COMMIT")
    marks.append(time.perf_counter())
    out = head_block_rows(start, end, rows, cfg.merge_ns, existing)
    marks.append(time.perf_counter())
    conn.execute("BEGIN IMMEDIATE")
    covering_blocks(conn, start, rows, cfg)
    marks.append(time.perf_counter())
    # The DELETE's row count is the check that no late rows arrived
    # (collector.storage.sqlite.compactor).
    deleted = conn.execute(
        "DELETE FROM readings_head WHERE ts >= ? AND ts < ?", (start, end)
    ).rowcount
    assert deleted == len(rows)
    marks.append(time.perf_counter())
    insert_blocks(conn, out)
    marks.append(time.perf_counter())
    conn.execute("COMMIT")
    marks.append(time.perf_counter())
    names = ("read", "encode", "check", "delete", "insert", "commit")
    ms = {n: 1e3 * (b - a) for n, a, b in zip(names, marks[:-1], marks[1:], strict=True)}
    ms["locked"] = 1e3 * (marks[-1] - marks[2])
    return ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--synchronous", choices=("NORMAL", "FULL"), default="NORMAL")
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument(
        "--run-windows", type=int, default=1, help="windows compacted together (a slot)"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-lock-") as tmp:
        path = Path(tmp) / "lock.db"
        store.migrate(path)
        conn = store.connect(path, synchronous=args.synchronous)
        span = args.run_windows
        _fill(conn, (args.windows + 1) * span)
        n = SERIES * PER_WINDOW * span
        print(f"synchronous={args.synchronous}, {n:,} head rows per step ({span} windows), ms")
        print("| step | read | encode | check | insert | delete | commit | locked | "
              "µs/reading locked | µs/reading unlocked |")  # fmt: skip
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for k in range(args.windows):
            ms = _compact(conn, k * span * compactor.WINDOW_NS, span)
            per = 1e3 * ms["locked"] / n
            free = 1e3 * (ms["read"] + ms["encode"]) / n
            cols = " | ".join(f"{ms[n]:.1f}" for n in ("read", "encode", "check", "insert",
                                                         "delete", "commit", "locked"))  # fmt: skip
            print(f"| {k} | {cols} | {per:.2f} | {free:.2f} |")
        conn.close()


if __name__ == "__main__":
    main()
