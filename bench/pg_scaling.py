"""Durable ingest on PostgreSQL with one and with two collectors, side by side.

    .venv/bin/python -m bench.pg_scaling                  # 1 then 2 collectors, --pg each
    .venv/bin/python -m bench.pg_scaling --sqlite         # and 1 collector on SQLite first
    .venv/bin/python -m bench.pg_scaling --duration 20 --connections 100 --batch 500

Runs `bench/load.py --pg --collectors N --json` for each N in --collectors-list (each run on
its own throwaway database telemetry_bench_<random>), with the same load flags, one after the
other, and prints one row per run: acknowledged readings/s, ACK p50/p99 and the CPU split
(collectors with their maintenance processes, PostgreSQL server processes, load generators)
in seconds and in µs per reading. Nothing here is used by the product.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

LOAD = Path(__file__).with_name("load.py")


def one(store: str, collectors: int, load_flags: list[str]) -> dict[str, object]:
    cmd = [sys.executable, str(LOAD), "--json", "--collectors", str(collectors), *load_flags]
    if store == "postgresql":
        cmd.append("--pg")
    print("$", " ".join(cmd[1:]), file=sys.stderr)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    report: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return report


def row(r: dict[str, object]) -> str:
    def f(key: str) -> object:
        v = r.get(key)
        return "-" if v is None else v

    return (
        f"| {r['store']} | {r['collectors']} | {f('readings_per_s'):,} | "
        f"{f('ack_p50_ms')} / {f('ack_p99_ms')} | "
        f"{f('cpu_s_collectors')} / {f('cpu_s_postgres')} / {f('cpu_s_loadgen')} | "
        f"{f('cpu_us_per_reading_collectors')} / {f('cpu_us_per_reading_postgres')} / "
        f"{f('cpu_us_per_reading_loadgen')} | {f('machine_busy')} | "
        f"{len(r.get('errors', []) or [])} |"  # type: ignore[arg-type]
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--connections", type=int, default=100)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--pipeline", type=int, default=4)
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--grouped", action="store_true")
    ap.add_argument("--sqlite", action="store_true", help="also 1 collector on SQLite, first")
    ap.add_argument("--collectors-list", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--json", action="store_true", help="print the reports as JSON lines too")
    args = ap.parse_args()
    flags = [
        "--connections", str(args.connections), "--processes", str(args.processes),
        "--batch", str(args.batch), "--pipeline", str(args.pipeline),
        "--duration", str(args.duration), *(["--grouped"] if args.grouped else []),
    ]  # fmt: skip
    runs = [("sqlite", 1)] if args.sqlite else []
    runs += [("postgresql", n) for n in args.collectors_list]
    reports = [one(store, n, flags) for store, n in runs]
    print(f"# load: {' '.join(flags)}")
    print(
        "| store | collectors | readings/s | ACK p50 / p99 ms | CPU s: collectors / postgres"
        " / load | µs per reading: collectors / postgres / load | machine busy | errors |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in reports:
        print(row(r))
    if args.json:
        for r in reports:
            print(json.dumps(r))


if __name__ == "__main__":
    main()
