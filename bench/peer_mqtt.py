"""Side by side: the collector against Mosquitto + paho + a validating SQLite subscriber.

    python -m bench.peer_mqtt                       # 100 devices, 2 processes, 20 s per side
    python -m bench.peer_mqtt --duration 30 --batch 500 --pipeline 4 --json
    python -m bench.peer_mqtt --connections 1000 --rate 10000 --batch 10 --pipeline 2

Both sides get the same readings (`bench.load.now_readings`: batches of --batch temperature
readings per device, device time "now"), the same number of client processes, devices and
unacknowledged batches per device, for --duration seconds each, one after the other, on
127.0.0.1 only:

- ours: the real collector daemon (a subprocess, `--synchronous full`) fed by `bench.load`'s
  client processes; a batch counts once its ACK (sent after the commit) is back.
- peer: the machine's Mosquitto broker (127.0.0.1:1883, not started here: without it this
  prints one line and exits 2), `bench.mqtt_peer`'s paho publishers (QoS 1) and one paho
  subscriber (QoS 1, persistent session, manual acks after commit) that validates with the
  collector's `Ingest.prepare` and writes a plain `(series_id, ts)` table (WAL, FULL); a
  batch counts once the subscriber's transaction holding it has committed.

Reported per side: readings counted in the database afterwards, durable readings/s (stored
readings over the time from the start to the last ACK or commit), CPU seconds of the server
side (collector + its maintenance process; broker + subscriber) and of the generators, and
latency per batch: ours from send to ACK at the client, the peer's from publish to the
subscriber's commit (no acknowledgement reaches a publisher: MQTT has none end to end) plus
publish to PUBACK (the broker holds the message in memory only). Then the ratio ours/peer.
Nothing here is used by the product.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import multiprocessing as mp
import os
import secrets
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import psutil

from bench import load

START_DELAY_S: Final = 2.0  # from the start signal to the first batch: every HELLO/CONNECT
RESULT_TIMEOUT_S: Final = 180.0  # past the stop, for a side's drain and its reports
BROKER_MISSING: Final = (
    "no MQTT broker listens on {addr}: start Mosquitto (Debian package mosquitto: "
    "`mosquitto -d -c /etc/mosquitto/mosquitto.conf`) and run again"
)


def broker_listening(host: str, port: int) -> bool:
    """True if something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _broker_process(port: int) -> psutil.Process | None:
    """The process listening on `port` (the broker), if this user may see it."""
    with contextlib.suppress(psutil.Error):
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                return psutil.Process(c.pid)
    return None


def _cpu_s(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    t = proc.cpu_times()
    return float(t.user + t.system)


def _quantiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None}
    s = sorted(values)
    return {"p50": round(statistics.median(s), 2), "p99": round(s[int(len(s) * 0.99) - 1], 2)}


def _wait_until(when: float) -> None:
    time.sleep(max(0.0, when - time.time()))


def run_ours(args: argparse.Namespace, db: Path) -> dict[str, Any]:
    """The collector daemon fed by bench.load's client processes."""
    limit = str(args.connections + 100)
    col = load.Collector(db, ["--synchronous", "full", "--max-connections", limit,
                              "--max-connections-per-ip", limit])  # fmt: skip
    clients: load.Clients | None = None
    load_avg = [round(os.getloadavg()[0], 2)]
    try:
        assert col.addr is not None
        clients = load.Clients(_load_args(args), [col.addr])
        clients.connect()
        start, _stop = clients.go(args.duration)
        _wait_until(start)
        cpu0, child0 = col.cpu_s(), col.children_cpu_s()
        results = clients.results(args.duration + RESULT_TIMEOUT_S)
        cpu, child = col.cpu_s() - cpu0, col.children_cpu_s() - child0
        load_avg.append(round(os.getloadavg()[0], 2))
        metrics = col.commit_quantiles()
    finally:
        if clients is not None:
            clients.join()
        exit_code = col.stop()
    acked = sum(r[0] for r in results)
    last = max((r[6] for r in results), default=start)
    stored = _count(db, "SELECT (SELECT count(*) FROM readings_head)"
                        " + (SELECT coalesce(sum(count), 0) FROM blocks)")  # fmt: skip
    commits = metrics.get("commit_count") or 0
    return {
        "readings_sent": sum(r[1] + r[2] for r in results) * args.batch,  # ACKed + RETRY
        "readings_acked": acked,
        "readings_stored": stored,
        "readings_per_s": round(stored / (last - start)) if last > start else 0,
        "seconds": round(last - start, 2),
        "server_cpu_s": round(cpu + child, 2),
        "server_cpu_parts": {"collector": round(cpu, 2), "maintenance": round(child, 2)},
        "generator_cpu_s": round(sum(r[5] for r in results), 2),
        "latency_ms": _quantiles([x for r in results for x in r[4]]),
        "latency_is": "send -> ACK after commit (client)",
        "transactions": commits,
        "rows_per_transaction": round(stored / commits) if commits else None,
        "retries": sum(r[2] for r in results),
        "errors": [e for r in results for e in r[3]][:5]
        + ([] if exit_code == 0 else [f"collector exit {exit_code}"]),
        "load_avg_1m": load_avg,
    }


def _load_args(args: argparse.Namespace) -> argparse.Namespace:
    """What bench.load's client workers read from their namespace."""
    return argparse.Namespace(connections=args.connections, processes=args.processes,
                              batch=args.batch, pipeline=args.pipeline, rate=args.rate,
                              duration=args.duration, idle=0,
                              grouped=False)  # fmt: skip  # rows, as the peer's messages carry


def run_peer(args: argparse.Namespace, db: Path) -> dict[str, Any]:
    """Mosquitto + paho publishers + the validating SQLite subscriber."""
    from bench import mqtt_peer  # paho-mqtt: the bench extra

    broker = _broker_process(args.port)
    prefix = f"telemetry-bench/{os.getpid()}-{secrets.token_hex(4)}"
    ctx = mp.get_context("spawn")
    stored = ctx.Array("q", args.processes, lock=False)  # messages committed, per publisher
    ready, go_q, out, sub_out = ctx.Queue(), ctx.Queue(), ctx.Queue(), ctx.Queue()
    stop = ctx.Event()
    sub = ctx.Process(target=mqtt_peer.subscriber,
                      args=(args, prefix, str(db), stored, ready, stop, sub_out))  # fmt: skip
    names = [f"bench-{i}" for i in range(args.connections)]
    pubs = [
        ctx.Process(target=mqtt_peer.publisher,
                    args=(i, names[i :: args.processes], args, prefix, stored, ready, go_q, out))
        for i in range(args.processes)
    ]  # fmt: skip
    load_avg = [round(os.getloadavg()[0], 2)]
    try:
        sub.start()
        ready.get(timeout=120)  # subscribed before anything is published
        for p in pubs:
            p.start()
        for _ in pubs:
            ready.get(timeout=120)
        start = time.time() + START_DELAY_S
        for _ in pubs:
            go_q.put((start, start + args.duration))
        _wait_until(start)
        sub_ps = psutil.Process(sub.pid)
        sub0, broker0 = _cpu_s(sub_ps), _cpu_s(broker)
        results = [out.get(timeout=args.duration + RESULT_TIMEOUT_S) for _ in pubs]
        sub_cpu, broker_cpu = _cpu_s(sub_ps) - sub0, _cpu_s(broker) - broker0
        load_avg.append(round(os.getloadavg()[0], 2))
        stop.set()
        sres = sub_out.get(timeout=RESULT_TIMEOUT_S)
    finally:
        stop.set()
        for p in [*pubs, sub]:
            p.join(30)
            if p.is_alive():
                p.kill()
    published = sum(r["readings"] for r in results)
    stored_rows = _count(db, "SELECT count(*) FROM readings")
    last = sres["last_commit"]
    return {
        "readings_sent": published,
        "readings_acked": sres["readings"],
        "readings_stored": stored_rows,
        "readings_per_s": round(stored_rows / (last - start)) if last > start else 0,
        "seconds": round(last - start, 2),
        "server_cpu_s": round(broker_cpu + sub_cpu, 2),
        "server_cpu_parts": {
            "broker": round(broker_cpu, 2) if broker else None,
            "subscriber": round(sub_cpu, 2),
        },
        "generator_cpu_s": round(sum(r["cpu_s"] for r in results), 2),
        "latency_ms": _quantiles(sres["latency_ms"]),
        "latency_is": "publish -> subscriber commit (no ACK reaches the publisher)",
        "puback_ms": _quantiles([x for r in results for x in r["puback_ms"]]),
        "transactions": sres["transactions"],
        "rows_per_transaction": (
            round(sres["rows_written"] / sres["transactions"]) if sres["transactions"] else None
        ),
        "rejected": sres["rejected"],
        "errors": ([e for r in results for e in r["errors"]] + sres["errors"])[:5],
        "load_avg_1m": load_avg,
    }


def _count(db: Path, sql: str) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def report(args: argparse.Namespace, ours: dict[str, Any], peer: dict[str, Any]) -> dict[str, Any]:
    """Both sides plus the ratios ours/peer."""
    for side in (ours, peer):
        n = side["readings_stored"]
        side["server_cpu_us_per_reading"] = round(side["server_cpu_s"] / n * 1e6, 2) if n else None
    return {
        "config": {k: getattr(args, k) for k in (
            "connections", "processes", "batch", "pipeline", "rate", "duration", "commit_rows",
            "peer_first")},
        "ours": ours,
        "peer": peer,
        "ratio_ours_over_peer": {
            # Paced by --rate, both sides store what they are sent: no throughput to compare.
            "readings_per_s": None if args.rate else _ratio(
                ours["readings_per_s"], peer["readings_per_s"]),
            "server_cpu_us_per_reading": _ratio(
                ours["server_cpu_us_per_reading"], peer["server_cpu_us_per_reading"]),
            "latency_p99_ms": _ratio(ours["latency_ms"]["p99"], peer["latency_ms"]["p99"]),
        },
    }  # fmt: skip


def _table(rep: dict[str, Any]) -> str:
    ours, peer, cfg = rep["ours"], rep["peer"], rep["config"]

    def lat(q: dict[str, float | None]) -> str:
        return f"{q['p50']} / {q['p99']}"

    def parts(side: dict[str, Any]) -> str:
        return " + ".join(f"{k} {v}" for k, v in side["server_cpu_parts"].items())

    def load(side: dict[str, Any]) -> str:
        return " / ".join(f"{x:.2f}" for x in side["load_avg_1m"])

    rows = [
        ("readings stored (rows counted)", f"{ours['readings_stored']:,}",
         f"{peer['readings_stored']:,}"),
        ("readings sent", f"{ours['readings_sent']:,}", f"{peer['readings_sent']:,}"),
        ("durable readings/s", f"{ours['readings_per_s']:,}", f"{peer['readings_per_s']:,}"),
        ("server CPU s", str(ours["server_cpu_s"]), str(peer["server_cpu_s"])),
        ("  of which", parts(ours), parts(peer)),
        ("server CPU µs per reading", str(ours["server_cpu_us_per_reading"]),
         str(peer["server_cpu_us_per_reading"])),
        ("generator CPU s", str(ours["generator_cpu_s"]), str(peer["generator_cpu_s"])),
        ("latency p50 / p99 ms (to durable)", lat(ours["latency_ms"]), lat(peer["latency_ms"])),
        ("PUBACK p50 / p99 ms (in memory)", "-", lat(peer["puback_ms"])),
        ("rows per transaction", str(ours["rows_per_transaction"]),
         str(peer["rows_per_transaction"])),
        ("load average 1 min, start / end", load(ours), load(peer)),
    ]  # fmt: skip
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    head = (f"{cfg['connections']} devices, {cfg['processes']} client processes, batches of "
            f"{cfg['batch']}, {cfg['pipeline']} in flight per device, "
            f"{'rate ' + str(cfg['rate']) + '/s' if cfg['rate'] else 'as fast as acked'}, "
            f"{cfg['duration']} s per side")  # fmt: skip
    lines = [head, "", f"{'':{w0}}  {'ours (collector)':>{w1}}  peer (Mosquitto + paho)"]
    lines += [f"{a:{w0}}  {b:>{w1}}  {c}" for a, b, c in rows]
    r = rep["ratio_ours_over_peer"]
    rate = "n/a (paced by --rate)" if cfg["rate"] else f"{r['readings_per_s']}x"
    lines += ["", f"ours/peer: readings/s {rate}, server CPU per reading "
              f"{r['server_cpu_us_per_reading']}x, p99 latency {r['latency_p99_ms']}x"]  # fmt: skip
    for name, side in (("ours", ours), ("peer", peer)):
        if side["errors"]:
            lines.append(f"{name} errors: {side['errors']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.peer_mqtt",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--connections", type=int, default=100, help="devices (ours: connections)")
    p.add_argument("--processes", type=int, default=2, help="client processes per side")
    p.add_argument("--batch", type=int, default=500, help="readings per batch / message")
    p.add_argument("--pipeline", type=int, default=4, help="unacknowledged batches per device")
    p.add_argument("--rate", type=float, default=0, help="total readings/s (0: as fast as acked)")
    p.add_argument("--duration", type=float, default=20, help="seconds of sending per side")
    p.add_argument("--commit-rows", type=int, default=10_000,
                   help="peer: most rows per subscriber transaction")  # fmt: skip
    p.add_argument("--broker", default="127.0.0.1:1883", help="loopback HOST:PORT of the broker")
    p.add_argument("--keep", type=Path, help="write ours.db and peer.db here and keep them")
    p.add_argument("--peer-first", action="store_true", help="run the peer's side first")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    args.host, _, port = args.broker.rpartition(":")
    args.port = int(port)
    if not ipaddress.ip_address(args.host).is_loopback:
        p.error("--broker must be a loopback address")
    if args.processes < 1 or args.connections < args.processes:
        p.error("need at least one device per process")
    if not broker_listening(args.host, args.port):
        print(BROKER_MISSING.format(addr=args.broker), file=sys.stderr)
        return 2
    try:
        import paho.mqtt  # noqa: F401
    except ImportError:
        print("paho-mqtt is missing: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    load.raise_fd_limit()
    with tempfile.TemporaryDirectory(prefix="telemetry-peer-") as tmp:
        where = args.keep or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        for name in ("ours.db", "peer.db"):
            for suffix in ("", "-wal", "-shm"):
                (where / (name + suffix)).unlink(missing_ok=True)
        if args.peer_first:
            peer = run_peer(args, where / "peer.db")
            ours = run_ours(args, where / "ours.db")
        else:
            ours = run_ours(args, where / "ours.db")
            peer = run_peer(args, where / "peer.db")
    rep = report(args, ours, peer)
    print(json.dumps(rep, indent=2) if args.json else _table(rep))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
