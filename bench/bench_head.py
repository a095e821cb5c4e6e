"""The head as one row per reading vs one row per (series, batch): what each costs the CPU.

The head (collector.storage.sqlite.store.HEAD) holds one row per reading, keyed
(ts, series_id): its primary key is what makes a resent reading a no-op. A "chunk head"
would hold one row per series per batch instead (the batch's timestamps and values of that
series packed as arrays), so a 496-reading batch of 8 series is 8 rows, and the compactor
concatenates chunks instead of fetching one Python tuple per reading. Dedup then moves out
of the primary key: a series' chunk whose first timestamp is above the series' last stored
one (the common, in-order case) needs no lookup; anything else must read the overlapping
chunks first (not exercised here: this data arrives in order).

This measures the two costs that differ, on the same readings, one process, CPU time
(`time.process_time`), in a temporary directory:

- **insert**: batches of 8 series x 62 readings from 1,000 devices, 20 batches per
  `synchronous=FULL` transaction (a group commit), WAL. Row head: multi-row
  `INSERT OR IGNORE` (collector.storage.sqlite.bulkinsert), as the writer does. Chunk head:
  one row per series per batch, timestamps and values packed with `array`, plus the
  in-order check against a per-series last-timestamp cache.
- **compact read**: every 1-minute window read back grouped per series as the compactor
  needs it (row head: `ORDER BY series_id, ts` into tuples, grouped in Python; chunk head:
  chunks by series, unpacked and concatenated with numpy), then the window deleted.

    python -m bench.bench_head                   # 2,000 batches (~1M readings)
    python -m bench.bench_head --batches 4000 --repeat 3

Nothing here is used by the product.
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import statistics
import tempfile
import time
from array import array
from pathlib import Path

import numpy as np

from collector.storage.sqlite import store
from collector.storage.sqlite.bulkinsert import BulkInsert

S = 10**9
SERIES_PER_DEVICE = 8
PER_SERIES = 62  # 8 x 62 = 496 readings per batch
DEVICES = 1_000
GROUP = 20  # batches per transaction
WINDOW_NS = 60 * S

ROW_INSERT = BulkInsert(f"INSERT OR IGNORE INTO {store.HEAD} (ts, series_id, value, lag_ms)", 4)
CHUNKS = "head_chunks"
CHUNK_SCHEMA = (
    f"CREATE TABLE {CHUNKS} (id INTEGER PRIMARY KEY, series_id INTEGER NOT NULL, "
    "first_ts INTEGER NOT NULL, last_ts INTEGER NOT NULL, n INTEGER NOT NULL, "
    "ts BLOB NOT NULL, vals BLOB NOT NULL, lags BLOB NOT NULL)",
    f"CREATE INDEX head_chunks_by_time ON {CHUNKS}(first_ts)",
)
CHUNK_INSERT = f"INSERT INTO {CHUNKS} (series_id, first_ts, last_ts, n, ts, vals, lags) VALUES "


Batch = tuple[int, list[tuple[int, list[int], list[float]]]]


def _batches(count: int) -> list[Batch]:
    """(device, [(series_id, ts…, values…) per series]) in arrival order: each device sends
    62 s of its 8 series at 1 Hz per batch, devices interleaved."""
    out = []
    base = 1_700_000_000 * S
    sent = [0] * DEVICES
    for b in range(count):
        dev = (b * 7919) % DEVICES
        start = base + sent[dev] * S + dev * 1_000
        sent[dev] += PER_SERIES
        series = []
        for k in range(SERIES_PER_DEVICE):
            ts = [start + j * S for j in range(PER_SERIES)]
            vals = [20.0 + ((dev + k + j) % 50) * 0.1 for j in range(PER_SERIES)]
            series.append((dev * SERIES_PER_DEVICE + k + 1, ts, vals))
        out.append((dev, series))
    return out


def _insert_rows(conn: sqlite3.Connection, batches: list[Batch]) -> float:
    t0 = time.process_time()
    for g in range(0, len(batches), GROUP):
        conn.execute("BEGIN IMMEDIATE")
        for _dev, series in batches[g : g + GROUP]:
            rows = [
                (t, sid, v, 5) for sid, ts, vals in series for t, v in zip(ts, vals, strict=True)
            ]
            ROW_INSERT(conn, rows)
        conn.execute("COMMIT")
    return time.process_time() - t0


def _insert_chunks(conn: sqlite3.Connection, batches: list[Batch]) -> float:
    last: dict[int, int] = {}
    t0 = time.process_time()
    for g in range(0, len(batches), GROUP):
        conn.execute("BEGIN IMMEDIATE")
        for _dev, series in batches[g : g + GROUP]:
            params: list[object] = []
            for sid, ts, vals in series:
                first = ts[0]
                if first <= last.get(sid, -1):
                    raise RuntimeError("out-of-order data: not what this benchmark measures")
                last[sid] = ts[-1]
                params += (
                    sid,
                    first,
                    ts[-1],
                    len(ts),
                    array("q", ts).tobytes(),
                    array("d", vals).tobytes(),
                    array("i", [5] * len(ts)).tobytes(),
                )
            n = len(series)
            conn.execute(CHUNK_INSERT + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * n), params)
        conn.execute("COMMIT")
    return time.process_time() - t0


def _windows(conn: sqlite3.Connection, table: str, column: str) -> list[int]:
    lo, hi = conn.execute(f"SELECT min({column}), max({column}) FROM {table}").fetchone()
    first = lo - lo % WINDOW_NS
    return list(range(first, hi + 1, WINDOW_NS))


def _compact_rows(conn: sqlite3.Connection) -> tuple[float, int]:
    done = 0
    t0 = time.process_time()
    for w in _windows(conn, store.HEAD, "ts"):
        rows = conn.execute(
            f"SELECT series_id, ts, value FROM {store.HEAD} WHERE ts >= ? AND ts < ? "
            "ORDER BY series_id, ts",
            (w, w + WINDOW_NS),
        ).fetchall()
        per: dict[int, tuple[list[int], list[object]]] = {}
        for sid, t, v in rows:
            entry = per.get(sid)
            if entry is None:
                entry = per[sid] = ([], [])
            entry[0].append(t)
            entry[1].append(v)
        done += len(rows)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(f"DELETE FROM {store.HEAD} WHERE ts >= ? AND ts < ?", (w, w + WINDOW_NS))
        conn.execute("COMMIT")
    return time.process_time() - t0, done


def _compact_chunks(conn: sqlite3.Connection) -> tuple[float, int]:
    """Chunks are assigned to the window of their first timestamp (a chunk may run past it:
    a compactor of this layout would write blocks by chunk, not cut at window bounds)."""
    done = 0
    t0 = time.process_time()
    for w in _windows(conn, CHUNKS, "first_ts"):
        rows = conn.execute(
            f"SELECT series_id, ts, vals FROM {CHUNKS} WHERE first_ts >= ? AND first_ts < ? "
            "ORDER BY series_id, first_ts",
            (w, w + WINDOW_NS),
        ).fetchall()
        per: dict[int, tuple[list[bytes], list[bytes]]] = {}
        for sid, tsb, vb in rows:
            entry = per.get(sid)
            if entry is None:
                entry = per[sid] = ([], [])
            entry[0].append(tsb)
            entry[1].append(vb)
        for tsbs, vbs in per.values():
            ts = np.frombuffer(b"".join(tsbs), dtype=np.int64)
            vals = np.frombuffer(b"".join(vbs), dtype=np.float64)
            done += len(ts)
            if len(vals) != len(ts):
                raise RuntimeError("chunk arrays disagree")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            f"DELETE FROM {CHUNKS} WHERE first_ts >= ? AND first_ts < ?", (w, w + WINDOW_NS)
        )
        conn.execute("COMMIT")
    return time.process_time() - t0, done


def _one(tmp: Path, layout: str, batches: list[Batch], run: int) -> dict[str, float]:
    path = tmp / f"{layout}-{run}.db"
    store.migrate(path)
    conn = store.connect(path)  # the collector's pragmas: WAL, synchronous=FULL
    conn.isolation_level = None
    for stmt in CHUNK_SCHEMA:
        conn.execute(stmt)
    readings = len(batches) * SERIES_PER_DEVICE * PER_SERIES
    if layout == "rows":
        insert = _insert_rows(conn, batches)
    else:
        insert = _insert_chunks(conn, batches)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = os.path.getsize(path)
    if layout == "rows":
        compact, done = _compact_rows(conn)
    else:
        compact, done = _compact_chunks(conn)
    conn.close()
    if done != readings:
        raise RuntimeError(f"{layout}: read back {done} of {readings} readings")
    return {
        "insert_us": insert / readings * 1e6,
        "compact_us": compact / readings * 1e6,
        "bytes": size / readings,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=2_000, help="496-reading batches")
    ap.add_argument("--repeat", type=int, default=3, help="runs per layout, alternating")
    args = ap.parse_args()
    batches = _batches(args.batches)
    print(
        f"{platform.machine()}, Python {platform.python_version()}, SQLite "
        f"{sqlite3.sqlite_version}, {len(batches) * SERIES_PER_DEVICE * PER_SERIES:,} readings, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    results: dict[str, list[dict[str, float]]] = {"rows": [], "chunks": []}
    with tempfile.TemporaryDirectory(prefix="bench-head-") as tmp:
        for run in range(args.repeat):
            for layout in ("rows", "chunks"):
                results[layout].append(_one(Path(tmp), layout, batches, run))
    print(
        "| head layout | insert + commit, µs/reading | read for compaction + delete, "
        "µs/reading | head file, B/reading |"
    )
    print("|---|---:|---:|---:|")
    for layout, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        name = "one row per reading" if layout == "rows" else "one row per (series, batch)"
        print(f"| {name} | {med['insert_us']:.3f} | {med['compact_us']:.3f} | {med['bytes']:.1f} |")


if __name__ == "__main__":
    main()
