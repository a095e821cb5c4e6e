"""The serial part of ingest: what one group commit costs per reading under the write lock.

With `--ingest-workers N` everything before the writer (accept, decode, validate, prepare)
runs in N processes at once, but the writer's transaction (`WriteSession.store`: stream rows,
series ids, the head insert, stats, `last_seq`, COMMIT) holds SQLite's one write lock, so
1 / (its time per reading) is the most any number of workers can store. This measures it in
process on a fresh file: batches are prepared first (not timed), then stored in groups as
the writer takes them (`--group` rows per transaction), timing each `store` call by the
writer thread's CPU (`time.thread_time`) and by the clock (fsync included).

    .venv/bin/python -m bench.bench_serial_store [--readings 500000] [--batch 500]
        [--devices 100] [--group 20000] [--synchronous FULL] [--json]

Readings are bench/load.py's: devices of 8 sensors, each sampled every tick; both the row
form (BATCH) and series groups (GBATCH) are prepared and stored, each into its own file.
Nothing here is used by the product.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench.bench_ingest_path import SENSORS, TS0
from collector.ingest.prepare import Ingest
from collector.storage.factory import open_storage
from collector.storage.interface import PreparedBatch, Session
from schemas import wire


def batches(
    ingest: Ingest, devices: list[int], n: int, size: int, grouped: bool
) -> list[tuple[Session, PreparedBatch]]:
    """`n` readings as batches of `size`, devices interleaved, each device's clock moving on."""
    out: list[tuple[Session, PreparedBatch]] = []
    ticks_per_batch = size // len(SENSORS)
    seq = 0
    while len(out) * size < n:
        seq += 1
        for dev in devices:
            readings: list[object] = []
            for t in range(ticks_per_batch):
                tick = (seq - 1) * ticks_per_batch + t
                ts = TS0 + tick * 1_000_000_000 + dev
                for i, (sensor, kind, unit) in enumerate(SENSORS):
                    value: object = tick * 7 if kind == "counter" else 20.0 + (tick + i) % 9
                    if kind == "state":
                        value = tick % 3 == 0
                    readings.append([sensor, kind, ts, value, unit, None])
            if grouped:
                g = wire.group_readings(readings)
                ev = wire.decode_body(wire.encode_body(wire.Batch(seq, g.rows, g.groups)))
                assert isinstance(ev, wire.Batch)
                b = ingest.prepare(seq, ev.readings, time.time_ns(), ev.groups)
            else:
                b = ingest.prepare(seq, readings, time.time_ns())
            out.append((Session(dev, "", 0), b))
            if len(out) * size >= n:
                break
    return out


def run(args: argparse.Namespace, grouped: bool) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="telemetry-serial-") as tmp:
        storage = open_storage(str(Path(tmp) / "s.db"))
        try:
            devices = [
                storage.add_device(f"dev-{i}", time.time_ns())[0].id for i in range(args.devices)
            ]
            todo = batches(Ingest.from_kinds(), devices, args.readings, args.batch, grouped)
            session = storage.writer_session(synchronous=args.synchronous)
            per_group = max(1, args.group // args.batch)
            cpu = wall = 0.0
            stored = 0
            for i in range(0, len(todo), per_group):
                group = todo[i : i + per_group]
                c0, w0 = time.thread_time(), time.perf_counter()
                result = session.store(group)
                cpu += time.thread_time() - c0
                wall += time.perf_counter() - w0
                stored += sum(o.accepted for o in result.outcomes)
            session.close()
        finally:
            storage.close()
    return {
        "form": "GBATCH" if grouped else "BATCH",
        "readings": stored,
        "store_cpu_us_per_reading": round(cpu / stored * 1e6, 3),
        "store_wall_us_per_reading": round(wall / stored * 1e6, 3),
        "ceiling_readings_per_s": round(stored / wall),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--readings", type=int, default=500_000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--group", type=int, default=20_000, help="rows per transaction")
    p.add_argument("--synchronous", default="FULL")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    rows = [run(args, grouped) for grouped in (False, True)]
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{'form':8} {'readings':>9} {'CPU µs/r':>9} {'wall µs/r':>10} {'ceiling r/s':>12}")
    for r in rows:
        print(
            f"{r['form']:8} {r['readings']:>9} {r['store_cpu_us_per_reading']:>9} "
            f"{r['store_wall_us_per_reading']:>10} {r['ceiling_readings_per_s']:>12}"
        )


if __name__ == "__main__":
    main()
