"""Storage engine benchmark: durable ingest with compaction in the same thread, size, reads.

    .venv/bin/python bench/bench_storage.py                       # 20M readings (or time budget)
    .venv/bin/python bench/bench_storage.py --readings 3000000 --devices 100 --window-s 1800

Mimics the writer: 1,000-row transactions (WAL, synchronous=FULL) of `executemany`
INSERT OR IGNORE into the head plus the per-series last_ts/last_value/count update, devices
interleaved, and one `compactor.compact_once` step after every 16th commit (--compact-every)
with "now" = the newest timestamp written (the data's clock runs faster than the wall
clock). Two-level compaction by default (1-minute head windows into small blocks, merged
per hour); `--merge-s 0 --window-s 3600 --grace-s 300` is the former one-level layout.
Timed: the SQLite work and compaction, not the generation of readings. Then:
bytes per reading after the last window is compacted, `scan.latest` for 1,000 series, and
24 h of one series in 1-minute buckets via `scan.aggregate`. Writes only to a temporary
directory (or --dir).

Sensors per device (values quantised as real sensors report them; one full-precision float):
temperature 0.01, humidity 0.1, pressure 0.1, voltage 0.001, counter (int), door (0/1),
co2 ppm (int), load (full-precision float).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sqlite3
import statistics
import tempfile
import time
import zlib
from array import array
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import msgpack

from collector.storage.sqlite import blocks, compactor, scan, store

S: int = 10**9
T0_NS: int = 1_767_225_600 * S  # 2026-01-01T00:00:00Z
INSERT_HEAD = (
    "INSERT OR IGNORE INTO readings_head (ts, series_id, value, lag_ms) VALUES (?, ?, ?, ?)"
)
UPDATE_SERIES = (
    "UPDATE series SET first_ts = coalesce(first_ts, ?1), "
    "last_value = CASE WHEN last_ts IS NULL OR ?2 >= last_ts THEN ?3 ELSE last_value END, "
    "last_ts = max(coalesce(last_ts, ?2), ?2), count = count + ?4 WHERE id = ?5"
)
# Format version and value codec (the first two bytes of a block, in hex).
CODECS = {"0100": "v1 int-delta", "0101": "v1 float-decimal", "0102": "v1 float-xor"}
CODECS |= {"0103": "v1 generic", "0104": "v1 number-decimal", "0292": "v2 plain"}
CODECS |= {"0300": "v3 int", "0301": "v3 float", "0302": "v3 float-decimal"}
CODECS |= {"0303": "v3 number", "0304": "v3 number-decimal"}
SENSORS = ("temperature", "humidity", "pressure", "voltage", "counter", "door", "co2", "load")


def readings(
    devices: int, sensors: int, interval_ns: int, jitter_ns: int, seed: int
) -> Iterator[tuple[int, int, int | float, int]]:
    """(ts, series_id, value, lag_ms) forever: every device samples all sensors each tick."""
    rnd = random.Random(seed)
    state = [[20.0, 50.0, 1013.0, 3.3, 0, 0, 420, 0.0] for _ in range(devices)]
    spacing = interval_ns // devices
    tick = 0
    while True:
        base = T0_NS + tick * interval_ns
        for dev in range(devices):
            st = state[dev]
            ts = base + dev * spacing
            first = dev * sensors + 1
            for s in range(sensors):
                r = rnd.random()
                k = s % 8
                value: int | float
                if k == 0:
                    st[0] += (r - 0.5) * 0.05
                    value = round(st[0], 2)
                elif k == 1:
                    st[1] += (r - 0.5) * 0.3
                    value = round(st[1], 1)
                elif k == 2:
                    st[2] += (r - 0.5) * 0.2
                    value = round(st[2], 1)
                elif k == 3:
                    value = round(3.3 + (r - 0.5) * 0.02, 3)
                elif k == 4:
                    st[4] += int(r * 10)
                    value = int(st[4])
                elif k == 5:
                    if r < 0.01:
                        st[5] = 1 - int(st[5])
                    value = int(st[5])
                elif k == 6:
                    st[6] += int((r - 0.5) * 6)
                    value = int(st[6])
                else:
                    value = r * 4.0
                t = ts + (rnd.randrange(-jitter_ns, jitter_ns + 1) if jitter_ns else 0)
                yield t, first + s, value, 5
        tick += 1


def setup_db(path: Path, devices: int, sensors: int) -> sqlite3.Connection:
    store.migrate(path)
    conn = store.connect(path)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO devices (id, name, token_hash, created_ns) VALUES (?, ?, 'x', 0)",
        [(d + 1, f"dev-{d:04d}") for d in range(devices)],
    )
    conn.executemany(
        "INSERT INTO series (id, device_id, sensor, kind, unit) VALUES (?, ?, ?, 'number', '')",
        [
            (d * sensors + s + 1, d + 1, SENSORS[s % 8] + ("" if s < 8 else str(s)))
            for d in range(devices)
            for s in range(sensors)
        ],
    )
    conn.execute("COMMIT")
    return conn


def write_batch(conn: sqlite3.Connection, rows: list[tuple[int, int, int | float, int]]) -> None:
    fold: dict[int, list[object]] = {}
    for ts, sid, value, _ in rows:
        f = fold.get(sid)
        if f is None:
            fold[sid] = [ts, ts, value, 1, sid]
        else:
            if ts >= f[1]:  # type: ignore[operator]  # ints
                f[1], f[2] = ts, value
            f[3] += 1  # type: ignore[operator]  # int
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(INSERT_HEAD, rows)
    conn.executemany(UPDATE_SERIES, list(fold.values()))
    conn.execute("COMMIT")


def median_ms(fn: object, runs: int = 15) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()  # type: ignore[operator]  # a callable
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def gorilla_encode(ts: list[int], values: list[float]) -> bytes:
    """Gorilla (VLDB 2015) in pure Python, for comparison: dod timestamps in the paper's
    buckets (64-bit escape for nanosecond clocks), XOR floats with leading/trailing zeros."""
    bits: list[str] = [format(ts[0], "064b")]
    prev_delta = 0
    for a, b in pairwise(ts):
        d = b - a
        dod = d - prev_delta
        prev_delta = d
        if dod == 0:
            bits.append("0")
        elif -63 <= dod <= 64:
            bits.append("10" + format(dod + 63, "07b"))
        elif -255 <= dod <= 256:
            bits.append("110" + format(dod + 255, "09b"))
        elif -2047 <= dod <= 2048:
            bits.append("1110" + format(dod + 2047, "012b"))
        else:
            bits.append("1111" + format(dod & (2**64 - 1), "064b"))
    raw = array("q")
    raw.frombytes(array("d", values).tobytes())
    prev = raw[0] & (2**64 - 1)
    bits.append(format(prev, "064b"))
    lead, trail = 65, 0
    for v in raw[1:]:
        cur = v & (2**64 - 1)
        x = cur ^ prev
        prev = cur
        if x == 0:
            bits.append("0")
            continue
        lz = min(64 - x.bit_length(), 31)
        tz = (x & -x).bit_length() - 1
        if lead <= lz and trail <= tz:
            bits.append("10" + format(x >> trail, "b").zfill(64 - lead - trail))
        else:
            lead, trail = lz, tz
            n = 64 - lz - tz
            bits.append("11" + format(lz, "05b") + format(n - 1, "06b") + format(x >> tz, f"0{n}b"))
    s = "".join(bits)
    s += "0" * (-len(s) % 8)
    return int(s, 2).to_bytes(len(s) // 8, "big")


def gorilla_decode(data: bytes, n: int) -> tuple[list[int], list[float]]:
    s = format(int.from_bytes(data, "big"), f"0{len(data) * 8}b")
    pos = 0
    ts = [int(s[pos : pos + 64], 2)]
    pos += 64
    delta = 0
    for _ in range(n - 1):
        if s[pos] == "0":
            dod, pos = 0, pos + 1
        elif s[pos + 1] == "0":
            dod, pos = int(s[pos + 2 : pos + 9], 2) - 63, pos + 9
        elif s[pos + 2] == "0":
            dod, pos = int(s[pos + 3 : pos + 12], 2) - 255, pos + 12
        elif s[pos + 3] == "0":
            dod, pos = int(s[pos + 4 : pos + 16], 2) - 2047, pos + 16
        else:
            dod = int(s[pos + 4 : pos + 68], 2)
            dod, pos = dod - 2**64 if dod >= 2**63 else dod, pos + 68
        delta += dod
        ts.append(ts[-1] + delta)
    prev = int(s[pos : pos + 64], 2)
    pos += 64
    out = [prev]
    lead = trail = 0
    for _ in range(n - 1):
        if s[pos] == "0":
            pos += 1
        else:
            if s[pos + 1] == "1":
                lead = int(s[pos + 2 : pos + 7], 2)
                m = int(s[pos + 7 : pos + 13], 2) + 1
                trail = 64 - lead - m
                pos += 13
            else:
                pos += 2
            m = 64 - lead - trail
            prev ^= int(s[pos : pos + m], 2) << trail
            pos += m
        out.append(prev)
    floats = array("d")
    floats.frombytes(array("Q", out).tobytes())
    return ts, list(floats)


def compare_codecs(args: argparse.Namespace) -> None:
    """Bytes and µs per reading of collector.storage.sqlite.blocks against pure-Python Gorilla and
    zlib over msgpack, on one window of each float sensor (what `encode` stores)."""
    per = int(args.window_s / args.interval_s)
    gen = readings(50, 8, int(args.interval_s * S), args.jitter_ms * 10**6, seed=1)
    cols: dict[int, tuple[list[int], list[float]]] = {}
    for _ in range(50 * 8 * per):
        ts, sid, value, _lag = next(gen)
        c = cols.setdefault(sid, ([], []))
        c[0].append(ts)
        c[1].append(float(value))
    floats = [c for sid, c in cols.items() if (sid - 1) % 8 in (0, 1, 2, 3, 7)]
    n = sum(len(t) for t, _ in floats)
    print(f"{len(floats)} float series x {per} readings (window {args.window_s}s)")
    print(f"{'codec':<28} {'B/reading':>9} {'encode us':>9} {'decode us':>9}")

    def measure(name: str, enc: object, dec: object) -> None:
        t = time.perf_counter()
        packed = [enc(ts, vs) for ts, vs in floats]  # type: ignore[operator]  # callables
        te = time.perf_counter() - t
        t = time.perf_counter()
        for p, (ts, vs) in zip(packed, floats, strict=True):
            assert dec(p, len(ts)) == (ts, vs)  # type: ignore[operator]  # callables
        td = time.perf_counter() - t
        size = sum(len(p) for p in packed)
        print(f"{name:<28} {size / n:>9.2f} {te / n * 1e6:>9.2f} {td / n * 1e6:>9.2f}")

    measure("blocks v3 (pcodec)", blocks.encode, lambda p, _n: blocks.decode(p))
    measure("blocks v1 (DEFLATE)", blocks.encode_deflate, lambda p, _n: blocks.decode(p))
    measure("gorilla (pure Python)", gorilla_encode, gorilla_decode)
    measure(
        "zlib(msgpack rows)",
        lambda ts, vs: zlib.compress(msgpack.packb([ts, vs]), 6),
        lambda p, _n: tuple(msgpack.unpackb(zlib.decompress(p))),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--readings", type=int, default=20_000_000)
    ap.add_argument("--slice", type=int, default=1_000_000, help="readings per reported slice")
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--sensors", type=int, default=8)
    ap.add_argument("--interval-s", type=float, default=10.0, help="sampling interval per series")
    ap.add_argument("--jitter-ms", type=int, default=0, help="random timestamp jitter, +/- ms")
    ap.add_argument("--window-s", type=int, default=compactor.WINDOW_NS // S)
    ap.add_argument("--grace-s", type=int, default=compactor.GRACE_NS // S)
    ap.add_argument(
        "--merge-s",
        type=int,
        default=compactor.MERGE_NS // S,
        help="second level: merge small blocks per window of this many seconds (0: one level)",
    )
    ap.add_argument("--merge-grace-s", type=int, default=compactor.MERGE_GRACE_NS // S)
    ap.add_argument("--max-rows", type=int, default=compactor.MAX_ROWS_PER_CALL)
    ap.add_argument("--step-rows", type=int, default=compactor.STEP_ROWS)
    ap.add_argument("--merge-step-rows", type=int, default=compactor.MERGE_STEP_ROWS)
    ap.add_argument("--txn-rows", type=int, default=1000)
    ap.add_argument("--max-seconds", type=float, default=900, help="stop ingest after this")
    ap.add_argument("--no-compaction", action="store_true", help="baseline: head only")
    ap.add_argument(
        "--head-index",
        action="store_true",
        help="experiment: add an index readings_head(series_id, ts) (not in the schema)",
    )
    ap.add_argument(
        "--compact-every", type=int, default=16, help="one compaction step per N transactions"
    )
    ap.add_argument("--dir", type=Path, default=None, help="keep the DB here (default: temp)")
    ap.add_argument("--compare-codecs", action="store_true", help="codec comparison only")
    args = ap.parse_args()
    if args.compare_codecs:
        compare_codecs(args)
        return

    config = compactor.CompactionConfig(
        window_ns=args.window_s * S,
        grace_ns=args.grace_s * S,
        max_rows=args.max_rows,
        merge_ns=args.merge_s * S,
        merge_grace_ns=args.merge_grace_s * S,
        step_rows=args.step_rows,
        merge_step_rows=args.merge_step_rows,
    )
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
        root = args.dir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        path = root / "bench.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        run(path, args, config)


def run(path: Path, args: argparse.Namespace, config: compactor.CompactionConfig) -> None:
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, {platform.platform()}")
    print(f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version}")
    print(
        f"shape: {args.devices} devices x {args.sensors} sensors, interval {args.interval_s}s, "
        f"jitter {args.jitter_ms} ms, window {args.window_s}s, grace {args.grace_s}s, "
        f"merge {args.merge_s}s, merge grace {args.merge_grace_s}s, "
        f"{args.txn_rows}-row transactions, synchronous=FULL"
    )
    conn = setup_db(path, args.devices, args.sensors)
    if args.head_index:
        conn.execute("CREATE INDEX head_by_series ON readings_head (series_id, ts)")
    gen = readings(
        args.devices, args.sensors, int(args.interval_s * S), args.jitter_ms * 10**6, seed=1
    )
    done = 0
    slice_t = slice_compact = 0.0
    total_t = total_compact = 0.0
    newest = T0_NS
    started = time.monotonic()
    print(f"{'slice':>10} {'readings/s':>11} {'compaction share':>17} {'head rows':>10}")
    while done < args.readings:
        rows = [next(gen) for _ in range(args.txn_rows)]
        t = time.perf_counter()
        write_batch(conn, rows)
        newest = max(newest, rows[-1][0])
        t2 = time.perf_counter()
        if not args.no_compaction and (done // args.txn_rows) % args.compact_every == 0:
            compactor.compact_once(conn, newest, config)
        t3 = time.perf_counter()
        slice_t += t3 - t
        slice_compact += t3 - t2
        done += len(rows)
        if done % args.slice == 0:
            m = done // args.slice
            print(
                f"{(m - 1) * args.slice / 1e6:>5g}-{m * args.slice / 1e6:<4g}M "
                f"{args.slice / slice_t:>11,.0f} "
                f"{slice_compact / slice_t:>16.0%} "
                f"{conn.execute('SELECT count(*) FROM readings_head').fetchone()[0]:>10,}",
                flush=True,
            )
            total_t += slice_t
            total_compact += slice_compact
            slice_t = slice_compact = 0.0
            if time.monotonic() - started > args.max_seconds:
                print(f"stopping at {done:,} readings: --max-seconds {args.max_seconds} reached")
                break
    total_t += slice_t  # a last partial slice
    total_compact += slice_compact
    print(
        f"total: {done:,} readings in {total_t:.1f}s = {done / total_t:,.0f} readings/s, "
        f"compaction {total_compact / total_t:.0%} of it"
    )
    head_rows = conn.execute("SELECT count(*) FROM readings_head").fetchone()[0]
    print(f"head rows before final compaction: {head_rows:,}")
    print("reads as ingest left it (closed windows compacted, the head as on a live collector):")
    report_reads(path, args, newest)
    if args.no_compaction:
        report_size(conn, path, done, vacuum=False)
        return
    t = time.perf_counter()
    steps = 0
    final = newest + config.window_ns + config.grace_ns + config.merge_ns + config.merge_grace_ns
    while compactor.compact_once(conn, final, config):
        steps += 1
    print(f"final compaction of the open windows: {steps} steps in {time.perf_counter() - t:.1f}s")
    report_size(conn, path, done)
    print("reads after compacting every window:")
    report_reads(path, args, newest)
    conn.close()


def report_size(conn: sqlite3.Connection, path: Path, done: int, vacuum: bool = True) -> None:
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    nblocks, blob = conn.execute("SELECT count(*), sum(length(data)) FROM blocks").fetchone()
    print(
        f"file {pages * page / 2**20:,.1f} MiB ({pages * page / done:.2f} B/reading), "
        f"in use {(pages - free) * page / done:.2f} B/reading, "
        f"block payloads {blob / done:.2f} B/reading in {nblocks:,} blocks "
        f"({done / nblocks:.0f} readings/block)"
    )
    if not vacuum:
        print(f"file {pages * page / 2**20:,.1f} MiB ({pages * page / done:.2f} B/reading)")
        return
    for codec, n, size, count in conn.execute(
        "SELECT hex(substr(data, 1, 2)), count(*), sum(length(data)), sum(count) "
        "FROM blocks GROUP BY 1"
    ):
        name = CODECS.get(codec, codec)
        print(f"  {name}: {n:,} blocks, {size / count:.2f} B/reading payload")
    t = time.perf_counter()
    conn.execute("VACUUM")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    vac = Path(path).stat().st_size
    print(
        f"after VACUUM ({time.perf_counter() - t:.0f}s): {vac / 2**20:,.1f} MiB = "
        f"{vac / done:.2f} B/reading"
    )


def report_reads(path: Path, args: argparse.Namespace, newest: int) -> None:
    reader = store.connect(path, readonly=True)
    ids = list(range(1, min(1000, args.devices * args.sensors) + 1))
    assert len(scan.latest(reader, ids)) == len(ids)
    latest_ms = median_ms(lambda: scan.latest(reader, ids))
    until = newest + 1
    since = until - 86_400 * S
    sid = 1
    buckets = list(scan.aggregate(reader, [sid], since, until, 60 * S, "avg"))
    agg_ms = median_ms(lambda: list(scan.aggregate(reader, [sid], since, until, 60 * S, "avg")))
    hour_ms = median_ms(lambda: list(scan.aggregate(reader, [sid], since, until, 3600 * S, "avg")))
    n_range = len(list(scan.read_range(reader, [sid], since, until)))
    range_ms = median_ms(lambda: list(scan.read_range(reader, [sid], since, until)))
    print(f"latest for {len(ids)} series: {latest_ms:.2f} ms (median)")
    print(
        f"24 h of one series in 1-minute buckets: {agg_ms:.2f} ms ({len(buckets)} buckets); "
        f"in 1-hour buckets (summaries): {hour_ms:.2f} ms; raw read_range of {n_range:,} "
        f"readings: {range_ms:.2f} ms"
    )
    reader.close()


if __name__ == "__main__":
    main()
