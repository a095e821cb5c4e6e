"""Codec and validation throughput: encode, decode (framing + msgpack + message parsing) and
batch validation of wire readings, per reading, for frames of 100 and 1,000 readings.

    .venv/bin/python -m bench.bench_codec [--repeat N] [--min-time S]
    .venv/bin/python -m bench.bench_codec --blocks [--repeat N]   # the storage block codec

`--blocks` measures the block codec instead (collector/storage/sqlite/blocks.py): bytes,
encode and decode CPU time (time.process_time) per reading of version 1 (DEFLATE) and
version 3 (pcodec) on hour blocks of bench/load.py's sensors (50 devices x 8 sensors, one
reading every 10 s, bools as the head stores them), decode checked for exact equality.

Each figure is the median (and the best) of N timed runs, each looping for at least S seconds;
on a busy machine the best run is the better estimate of the cost itself. The
readings are a device mix (8 sensors: temperature, humidity, pressure, voltage, power, energy,
gps, state; half of them tagged) and a homogeneous all-temperature batch. CPU only: no
sockets, no SQLite.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from bench.load import DEVICE_SENSORS, DeviceClock
from collector.storage.sqlite import blocks
from schemas.readings import ReadingValidator
from schemas.wire import (
    Batch,
    Connection,
    Hello,
    Reading,
    Role,
    Welcome,
    decode_body,
    encode,
)

TS0 = 1_700_000_000_000_000_000


def device_mix(n: int) -> list[Reading]:
    """n readings cycling through 8 sensors of one device, 10 ms apart."""
    out: list[Reading] = []
    for i in range(n):
        ts = TS0 + i * 10_000_000
        tags = {"site": "greenhouse", "bench": str(i % 4)} if i % 2 else None
        match i % 8:
            case 0:
                r = Reading("gh/air-temp", "temperature", ts, 21.5 + i % 7, "C", tags)
            case 1:
                r = Reading("gh/humidity", "humidity", ts, 55.0 + i % 9, "%", tags)
            case 2:
                r = Reading("gh/pressure", "pressure", ts, 1013.25, "hPa", tags)
            case 3:
                r = Reading("pump/voltage", "voltage", ts, 229.7, None, tags)
            case 4:
                r = Reading("pump/power", "power", ts, 350.0 + i % 11, "W", tags)
            case 5:
                r = Reading("pump/energy", "energy", ts, 1234.5 + i, "kWh", tags)
            case 6:
                r = Reading("truck/gps", "gps", ts, {"lat": 48.137, "lon": 11.575}, None, tags)
            case _:
                r = Reading("gh/door", "state", ts, bool(i % 3), None, tags)
        out.append(r)
    return out


def homogeneous(n: int) -> list[Reading]:
    return [
        Reading("gh/air-temp", "temperature", TS0 + i, 20.0 + i % 5, "C", None) for i in range(n)
    ]


def with_rejects(readings: list[object], every: int = 100) -> list[object]:
    """Every `every`-th reading made invalid (humidity of 150 %)."""
    out = list(readings)
    for i in range(0, len(out), every):
        out[i] = ["gh/humidity", "humidity", TS0, 150.0, "%", None]
    return out


def per_reading_us(
    fn: Callable[[], object], n: int, repeat: int, min_time_s: float
) -> tuple[float, float]:
    """Median and best µs per reading of `fn`, which handles n readings per call."""
    fn()  # warm up (pydantic and msgpack caches)
    loops = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        if time.perf_counter() - t0 >= min_time_s:
            break
        loops *= 2
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        runs.append((time.perf_counter() - t0) / loops / n * 1e6)
    return statistics.median(runs), min(runs)


def ready_collector() -> Connection:
    conn = Connection(Role.COLLECTOR)
    conn.receive_data(encode(Hello("bench", "t")))
    conn.next_event()
    conn.send(Welcome(0))
    return conn


def via_connection(conn: Connection, frame: bytes) -> object:
    """What the collector does per frame: buffer the bytes, then frame, decode and parse."""
    conn.receive_data(frame)
    return conn.next_event()


def end_to_end(validator: ReadingValidator, frame: bytes) -> object:
    event = decode_body(frame[4:])
    assert isinstance(event, Batch)
    return validator.validate_batch(event.readings)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


Column = tuple[list[int], list[blocks.Value]]


def hour_blocks(devices: int = 50) -> dict[str, list[Column]]:
    """One hour of each sensor of `devices` devices, by sensor name, as the head holds it."""
    args = argparse.Namespace(interval_s=10.0, t0_ns=1_767_225_600 * 10**9, connections=devices)
    out: dict[str, list[Column]] = {name: [] for name, _kind, _unit in DEVICE_SENSORS}
    for d in range(devices):
        rows = DeviceClock(d, args).batch(360)
        for i, (name, _kind, _unit) in enumerate(DEVICE_SENSORS):
            mine = rows[i :: len(DEVICE_SENSORS)]
            values = [int(r[3]) if type(r[3]) is bool else r[3] for r in mine]
            out[name].append(([r[2] for r in mine], values))
    return out


def cpu_us(fn: Callable[[], object], n: int, repeat: int) -> float:
    """Median CPU µs per reading of `fn`, which handles n readings per call."""
    fn()
    runs = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        runs.append((time.process_time() - t0) / n * 1e6)
    return statistics.median(runs)


def encode_all(
    enc: Callable[[list[int], list[blocks.Value]], bytes], cols: list[Column]
) -> list[bytes]:
    return [enc(ts, vs) for ts, vs in cols]


def decode_all(packed: list[bytes]) -> list[Column]:
    return [blocks.decode(p) for p in packed]


def bench_blocks(repeat: int) -> None:
    cols = hour_blocks()
    encoders = {"v1 (DEFLATE)": blocks.encode_deflate, "v3 (pcodec)": blocks.encode}
    print(f"python {platform.python_version()} on {cpu_model()}; median of {repeat} runs")
    print("| sensor | codec | B/reading | encode µs/reading | decode µs/reading |")
    print("|---|---|---:|---:|---:|")
    groups = {**cols, "all 8 sensors": [c for group in cols.values() for c in group]}
    for name, group in groups.items():
        n = sum(len(ts) for ts, _ in group)
        for label, enc in encoders.items():
            packed = encode_all(enc, group)
            for p, col in zip(packed, group, strict=True):
                assert repr(blocks.decode(p)) == repr(col)  # repr: 21 is not 21.0
            enc_us = cpu_us(partial(encode_all, enc, group), n, repeat)
            dec_us = cpu_us(partial(decode_all, packed), n, repeat)
            size = sum(map(len, packed)) / n
            print(f"| {name} | {label} | {size:.3f} | {enc_us:.3f} | {dec_us:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7, help="timed runs per figure (median)")
    ap.add_argument("--min-time", type=float, default=0.2, help="seconds per timed run")
    ap.add_argument("--blocks", action="store_true", help="the storage block codec instead")
    args = ap.parse_args()
    if args.blocks:
        bench_blocks(args.repeat)
        return
    validator = ReadingValidator()
    rows: list[tuple[str, int, float, float]] = []

    def measure(name: str, n: int, fn: Callable[[], object]) -> None:
        us, best = per_reading_us(fn, n, args.repeat, args.min_time)
        rows.append((name, n, us, best))
        print(f"{name:<44} {n:>5} {us:>8.3f} {best:>8.3f} µs {1e6 / us:>12,.0f}/s", flush=True)

    print(f"python {platform.python_version()} on {cpu_model()}")
    print(f"{'stage':<44} {'batch':>5} {'median':>8} {'best':>8}    {'readings/s':>13}")
    for label, make in (("device mix", device_mix), ("temperature only", homogeneous)):
        for n in (100, 1000):
            readings = make(n)
            frame = encode(Batch(1, readings))
            wire_readings: list[object] = [r.to_wire() for r in readings]
            measure(f"encode frame ({label})", n, partial(encode, Batch(1, readings)))
            measure(f"decode body ({label})", n, partial(decode_body, frame[4:]))
            measure(
                f"decode via Connection ({label})",
                n,
                partial(via_connection, ready_collector(), frame),
            )
            measure(
                f"validate_batch ({label})", n, partial(validator.validate_batch, wire_readings)
            )
            if label == "device mix":
                bad = with_rejects(wire_readings)
                measure(
                    "validate_batch (device mix, 1% rejects)",
                    n,
                    partial(validator.validate_batch, bad),
                )
                measure("decode + validate (device mix)", n, partial(end_to_end, validator, frame))
    print()
    print("| stage | batch | µs/reading (median) | µs/reading (best) | readings/s (median) |")
    print("|---|---:|---:|---:|---:|")
    for name, n, us, best in rows:
        print(f"| {name} | {n:,} | {us:.3f} | {best:.3f} | {1e6 / us:,.0f} |")


if __name__ == "__main__":
    main()
