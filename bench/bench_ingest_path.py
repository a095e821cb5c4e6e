"""Collector CPU per reading on the ingest hot path, row form (BATCH) against series groups
(GBATCH, protocol v1.2): decode the frame body, validate, prepare the columnar rows the
writer takes. In process, CPU time (`time.process_time`), no sockets, no SQLite.

    .venv/bin/python -m bench.bench_ingest_path [--repeat 3] [--min-time 1.0] [--json]

The readings are what bench/load.py --total sends: devices of 8 sensors of different kinds
(temperature, humidity, pressure, voltage, counter, state, two gauges), every sensor sampled
each tick, so a batch of N readings holds 8 series of N/8 readings each. Each figure is the
median of --repeat runs (each looping for at least --min-time seconds of CPU); the machine is
shared, so compare figures of one run of this script. `rejects` variants make one reading in
100 invalid: its group then takes the per-reading path.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial

from collector.ingest.prepare import Ingest
from schemas import wire

TS0 = 1_700_000_000_000_000_000
SENSORS: list[tuple[str, str, str | None]] = [
    ("temp", "temperature", "C"), ("hum", "humidity", "%"), ("press", "pressure", "hPa"),
    ("vbat", "voltage", "V"), ("pulses", "counter", None), ("door", "state", None),
    ("co2", "gauge", "ppm"), ("load", "gauge", None),
]  # fmt: skip


def device_batch(n: int, rejects: bool = False) -> list[object]:
    """n readings of one device: every sensor each tick, one second apart."""
    out: list[object] = []
    tick = 0
    while len(out) < n:
        ts = TS0 + tick * 1_000_000_000
        values: list[object] = [
            21.5 + tick % 7 * 0.1, 55.0 + tick % 9, 1013.2, 3.3, tick * 7, tick % 3 == 0,
            420 + tick % 11, (tick % 13) / 3,
        ]  # fmt: skip
        for (sensor, kind, unit), value in zip(SENSORS, values, strict=True):
            out.append([sensor, kind, ts, value, unit, None])
        tick += 1
    out = out[:n]
    if rejects:
        for i in range(0, n, 100):
            out[i] = ["hum", "humidity", TS0 + i, 150.0, "%", None]
    return out


def cpu_us_per_reading(fn: Callable[[], object], n: int, repeat: int, min_time_s: float) -> float:
    """Median over `repeat` runs of CPU microseconds per reading."""
    runs: list[float] = []
    for _ in range(repeat):
        loops = 0
        t0 = time.process_time()
        while True:
            fn()
            loops += 1
            dt = time.process_time() - t0
            if dt >= min_time_s:
                break
        runs.append(dt / (loops * n) * 1e6)
    return statistics.median(runs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--min-time", type=float, default=1.0)
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 500, 2000])
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    ingest = Ingest.from_kinds()
    received = TS0 + 10**12
    rows_out: list[dict[str, object]] = []
    for size in args.sizes:
        for rejects in (False, True):
            readings = device_batch(size, rejects)
            g = wire.group_readings(readings)
            row_body = wire.encode_body(wire.Batch(1, readings))
            grp_body = wire.encode_body(wire.Batch(1, g.rows, g.groups))
            row_ev = wire.decode_body(row_body)
            grp_ev = wire.decode_body(grp_body)
            assert isinstance(row_ev, wire.Batch) and isinstance(grp_ev, wire.Batch)
            a = ingest.prepare(1, row_ev.readings, received)
            b = ingest.prepare(1, grp_ev.readings, received, grp_ev.groups)
            assert a.valid_count == b.valid_count and len(a.rejects) == len(b.rejects)

            def row_all(body: bytes = row_body) -> object:
                ev = wire.decode_body(body)
                return ingest.prepare(1, ev.readings, received)  # type: ignore[union-attr]

            def grp_all(body: bytes = grp_body) -> object:
                ev = wire.decode_body(body)
                return ingest.prepare(1, ev.readings, received, ev.groups)  # type: ignore[union-attr]

            r, k = args.repeat, args.min_time
            figures = {
                "row_decode": cpu_us_per_reading(partial(wire.decode_body, row_body), size, r, k),
                "grouped_decode": cpu_us_per_reading(
                    partial(wire.decode_body, grp_body), size, r, k
                ),
                "row_validate_prepare": cpu_us_per_reading(
                    partial(ingest.prepare, 1, row_ev.readings, received), size, r, k
                ),
                "grouped_validate_prepare": cpu_us_per_reading(
                    partial(ingest.prepare, 1, grp_ev.readings, received, grp_ev.groups),
                    size,
                    r,
                    k,
                ),
                "row_total": cpu_us_per_reading(row_all, size, r, k),
                "grouped_total": cpu_us_per_reading(grp_all, size, r, k),
            }
            row = {
                "batch": size,
                "rejects": len(a.rejects),
                "groups": len(g.groups),
                "row_bytes": len(row_body),
                "grouped_bytes": len(grp_body),
                **{key: round(v, 3) for key, v in figures.items()},
                "speedup": round(figures["row_total"] / figures["grouped_total"], 2),
            }
            rows_out.append(row)
            if not args.json:
                print(json.dumps(row))
    if args.json:
        print(json.dumps({"python": platform.python_version(), "results": rows_out}))


if __name__ == "__main__":
    main()
