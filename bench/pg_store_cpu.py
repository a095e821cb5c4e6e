"""CPU per reading of the PostgreSQL store path alone, in process: the collector's side and
the server backend's, without the network, the codec or validation.

    .venv/bin/python -m bench.pg_store_cpu                       # 200 groups, all new
    .venv/bin/python -m bench.pg_store_cpu --resend 0.1          # 10% of batches sent twice
    .venv/bin/python -m bench.pg_store_cpu --profile 25          # and cProfile's top 25

Readings are shaped as bench/load.py sends them (100 devices, 8 sensors of mixed value
types: floats, ints, a bool), prepared by `collector.ingest.prepare` up front (not timed),
in batches of --batch readings, --group batches per `PostgresStorage.store` call (one
transaction each). Measured around the store calls only: this process's CPU time
(time.process_time) and the writer connection's server backend CPU (/proc/<pid>/stat, so
other clients of the same server do not count), each per stored reading. Runs on a
throwaway database. Nothing here is used by the product.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import time
from typing import Any

from bench.load import DEVICE_SENSORS
from collector.ingest.prepare import Ingest
from collector.storage.interface import PreparedBatch
from collector.storage.postgres.backend import PostgresStorage
from tests.storage.pgserver import throwaway_database

S = 10**9
T0_NS = 1_767_225_600 * S  # 2026-01-01T00:00:00Z
DEVICES = 100


def backend_cpu_s(pid: int) -> float:
    """utime + stime of one local process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_groups(args: argparse.Namespace) -> list[list[tuple[int, PreparedBatch]]]:
    ingest = Ingest.from_kinds()
    rnd = random.Random(1)
    ticks = max(1, args.batch // len(DEVICE_SENSORS))
    seqs = [0] * (DEVICES + 1)
    tss = [T0_NS + d * 10_000_000 for d in range(DEVICES + 1)]
    batches: list[tuple[int, PreparedBatch]] = []
    resent: list[tuple[int, PreparedBatch]] = []
    while len(batches) < args.groups * args.group:
        dev = len(batches) % DEVICES + 1
        readings: list[list[Any]] = []
        for _ in range(ticks):
            ts = tss[dev]
            values: list[Any] = [
                round(20 + rnd.random(), 2), round(50 + rnd.random(), 1), 1013.0 + rnd.random(),
                3.3, rnd.randrange(10**6), rnd.random() < 0.5, rnd.randrange(400, 500),
                rnd.random() * 4.0,
            ]  # fmt: skip
            for (sensor, kind, unit), value in zip(DEVICE_SENSORS, values, strict=True):
                readings.append([sensor, kind, ts, value, unit, None])
            tss[dev] += S
        seqs[dev] += 1
        b = ingest.prepare(seqs[dev], readings, tss[dev])
        batches.append((dev, b))
        if rnd.random() < args.resend:
            resent.append((dev, b))
        if resent and rnd.random() < args.resend:
            batches.append(resent.pop(0))
    return [batches[i : i + args.group] for i in range(0, len(batches), args.group)]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--groups", type=int, default=200)
    ap.add_argument("--group", type=int, default=10, help="batches per store call")
    ap.add_argument("--batch", type=int, default=500, help="readings per batch")
    ap.add_argument("--resend", type=float, default=0.0, help="share of batches sent twice")
    ap.add_argument("--profile", type=int, default=0, help="print cProfile's top N")
    args = ap.parse_args()
    groups = make_groups(args)
    with throwaway_database() as url:
        pg = PostgresStorage(url, now_ns=T0_NS)
        try:
            for i in range(1, DEVICES + 1):
                pg.add_device(f"dev-{i:03d}", T0_NS)
            pg.store(groups[0])  # series made, connection warm: not measured
            pid = pg._write().info.backend_pid
            prof = cProfile.Profile() if args.profile else None
            server0, cpu0, wall0 = backend_cpu_s(pid), time.process_time(), time.perf_counter()
            accepted = duplicate = 0
            if prof:
                prof.enable()
            for g in groups[1:]:
                for o in pg.store(g).outcomes:
                    accepted += o.accepted
                    duplicate += o.duplicate
            if prof:
                prof.disable()
            cpu = time.process_time() - cpu0
            wall = time.perf_counter() - wall0
            server = backend_cpu_s(pid) - server0
        finally:
            pg.close()
    n = accepted + duplicate
    print(
        f"readings {n:,} (accepted {accepted:,}, duplicate {duplicate:,}) in {wall:.2f} s; "
        f"µs per reading: collector {cpu / n * 1e6:.3f}, server backend {server / n * 1e6:.3f}, "
        f"total {(cpu + server) / n * 1e6:.3f}; load {os.getloadavg()[0]:.2f}"
    )
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(args.profile)


if __name__ == "__main__":
    main()
