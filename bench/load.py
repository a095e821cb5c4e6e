"""Load generator for the collector: many connections streaming batches, durable ACKs.

Starts a real collector subprocess on 127.0.0.1 (port 0, a temporary database unless --db is
given), opens N agent connections spread over P worker processes, streams BATCH frames for
--duration seconds and waits for their ACKs. Reports acknowledged readings/s, ACK latency
p50/p99 (send -> ACK, per batch) and the collector's RSS and CPU.

    python bench/load.py --connections 100 --processes 2 --batch 500 --duration 20
    python bench/load.py --connections 1000 --rate 10000 --batch 10 --duration 30
    python bench/load.py --idle 10000            # hold idle connections, report RSS
    python bench/load.py --grouped ...           # GBATCH: readings as series groups (v1.2)
    python bench/load.py --prefill 5000000 ...   # start from a DB already holding rows
    python bench/load.py --prefill 1200000 --prefill-closes-s 20 ...  # compaction 20 s in
    python bench/load.py --connections 1000 --total 20000000 --slice 1000000
    python bench/load.py --pg --collectors 2     # 2 collectors, throwaway PostgreSQL database
    python bench/load.py --ingest-workers 2 ...  # one collector, 2 ingest processes
    python bench/load.py --db postgresql://postgres@127.0.0.1/telemetry ...

--db takes a file or a postgresql:// URL (passed to the collector's --db as given); --pg
creates `telemetry_bench_<random>` on 127.0.0.1:5432 (see tests/storage/pgserver.py) and
drops it after the run. --collectors N starts N collectors on the same database and
connection k goes to collector k mod N. The report splits the run's CPU between the
collectors (with their maintenance processes), the processes named postgres (the whole
server) and the load generators, in seconds and µs per acknowledged reading.
`python -m bench.pg_scaling` runs 1 and 2 collectors on PostgreSQL side by side.

--ingest-workers N starts the one collector with N ingest processes; the CPU split counts
them all (with the maintenance process) under "collectors".

--total streams until that many readings are ACKed (instead of --duration) and reports the
acknowledged readings/s of every --slice readings (client side: the time from the slice's
first ACK to its last), the file's bytes per reading (read-only connection) and the
collector's RSS. The clients send one in-flight window (connections x pipeline x batch
readings) beyond --total, so the last slice is measured under the full load, not while the
pipeline drains with the clients idle (measured up to 30% faster than the slices before).
Each connection is a device with 8 sensors of different kinds sampled every --interval-s of
device time, on a clock that starts far enough in the past that the last reading is still
--margin-s before "now": the collector's compactor closes windows by its wall clock, so
every window is closed and hourly merges run during the load.

--grouped sends each batch's readings as series groups (GBATCH, protocol v1.2) to a collector
that announces them; the report's collector_cpu_us_per_reading compares the two forms.

Devices auto-register (--allow-unknown-devices). Nothing here is used by the product.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import queue
import random
import re
import resource
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from collector.storage.sqlite import store
from schemas import wire

LISTENING_RE = re.compile(r"listening ingest=(\S+):(\d+) http=(\S+)")
SENSORS = 8
SENSOR_NAMES = [f"s{i}" for i in range(SENSORS)]
# --total mode: one sensor of each shape (name, kind, unit) as a device reports them.
DEVICE_SENSORS: list[tuple[str, str, str | None]] = [
    ("temp", "temperature", "C"), ("hum", "humidity", "%"), ("press", "pressure", "hPa"),
    ("vbat", "voltage", "V"), ("pulses", "counter", None), ("door", "state", None),
    ("co2", "gauge", "ppm"), ("load", "gauge", None),
]  # fmt: skip


@dataclass
class Shared:
    """Cross-process counters of the --total mode (multiprocessing shared memory).

    `times[0]` is the first ACK's time.time(); `times[k]` (k >= 1) the time the acknowledged
    total first reached k * slice.
    """

    sent: Any
    acked: Any
    times: Any


class DeviceClock:
    """A device's readings: every sensor sampled each tick of device time, values drifting."""

    def __init__(self, index: int, args: argparse.Namespace) -> None:
        self.rnd = random.Random(index)
        interval = int(args.interval_s * 1e9)
        self.ts = args.t0_ns + index * (interval // max(1, args.connections))
        self.interval = interval
        self.state: list[float] = [20.0 + self.rnd.random() * 5, 50.0, 1013.0, 0.0, 0.0, 420.0]
        self.ticks = 0

    def batch(self, ticks: int) -> list[list[Any]]:
        out: list[list[Any]] = []
        st, rnd = self.state, self.rnd
        for _ in range(ticks):
            ts = self.ts
            st[0] += (rnd.random() - 0.5) * 0.05
            st[1] = min(100.0, max(0.0, st[1] + (rnd.random() - 0.5) * 0.3))
            st[2] += (rnd.random() - 0.5) * 0.2
            st[3] += rnd.randrange(10)
            if rnd.random() < 0.01:
                st[4] = 1.0 - st[4]
            st[5] = max(0.0, st[5] + rnd.randrange(-3, 4))
            values: list[Any] = [
                round(st[0], 2), round(st[1], 1), round(st[2], 1),
                round(3.3 + (rnd.random() - 0.5) * 0.02, 3), int(st[3]), st[4] == 1.0,
                int(st[5]), rnd.random() * 4.0,
            ]  # fmt: skip
            for (sensor, kind, unit), value in zip(DEVICE_SENSORS, values, strict=True):
                out.append([sensor, kind, ts, value, unit, None])
            self.ts += self.interval
            self.ticks += 1
        return out


def now_readings(ts: int, n: int) -> tuple[int, list[list[Any]]]:
    """A batch of `n` temperature readings at device time "now" (at least `ts` + `n`).

    Returns the batch's first timestamp (pass it back as `ts` for the next batch) and the
    readings; every reading of one device has its own (sensor, ts), so none is a duplicate.
    """
    ts = max(time.time_ns(), ts + n)
    readings = [
        [SENSOR_NAMES[i % SENSORS], "temperature", ts + i, 20.0 + (i & 7), "C", None]
        for i in range(n)
    ]
    return ts, readings


@dataclass
class Result:
    acked: int = 0
    batches: int = 0
    retries: int = 0
    errors: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    last_ack: float = 0.0  # time.time() of the last ACK


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ----------------------------------------------------------------------------- collector


class Collector:
    def __init__(self, db: Path | str, extra: list[str]) -> None:
        cmd = [sys.executable, "-m", "collector", "collector", "--listen", "127.0.0.1:0",
               "--http", "127.0.0.1:0", "--db", str(db), "--allow-unknown-devices",
               "--log-level", "WARNING", *extra]  # fmt: skip
        # The listening line is INFO: ask for it explicitly through the env-free path.
        cmd[cmd.index("--log-level") + 1] = "INFO"
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        self.addr: tuple[str, int] | None = None
        self.http: str | None = None
        self._ready = threading.Event()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(60):
            self.proc.kill()
            raise SystemExit("collector did not start:\n" + "".join(self.log))
        self.ps = psutil.Process(self.proc.pid)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if len(self.log) < 200:
                self.log.append(line)
            m = LISTENING_RE.search(line)
            if m:
                self.addr = (m.group(1), int(m.group(2)))
                self.http = m.group(3)
                self._ready.set()

    def rss_mb(self) -> float:
        return float(self.ps.memory_info().rss) / 2**20

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def all_cpu_s(self) -> float:
        """CPU of the collector and its child processes so far (0 for a process gone)."""
        with contextlib.suppress(psutil.Error):
            return self.cpu_s() + self.children_cpu_s()
        return 0.0

    def children_cpu_s(self) -> float:
        """CPU of the collector's child processes (the maintenance process)."""
        total = 0.0
        for child in self.ps.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                t = child.cpu_times()
                total += t.user + t.system
        return total

    def commit_quantiles(self) -> dict[str, float | None]:
        """Approximate commit-latency p50/p99 (ms, bucket upper bounds) from /metrics."""
        import urllib.request

        with urllib.request.urlopen(f"http://{self.http}/metrics", timeout=10) as r:
            text = r.read().decode()
        out: dict[str, float | None] = {}
        for what in ("commit", "batch"):
            buckets = [
                (float(m.group(1)), int(m.group(2)))
                for m in re.finditer(
                    rf'telemetry_{what}_seconds_bucket\{{le="([0-9.e+-]+)"\}} (\d+)', text
                )
            ]
            total_m = re.search(rf"telemetry_{what}_seconds_count (\d+)", text)
            total = int(total_m.group(1)) if total_m else 0
            out[f"{what}_count"] = total
            sum_m = re.search(rf"telemetry_{what}_seconds_sum (\S+)", text)
            out[f"{what}_seconds_sum"] = round(float(sum_m.group(1)), 3) if sum_m else None
            for q in (0.5, 0.99):
                bound = next((b for b, n in buckets if total and n >= q * total), None)
                out[f"{what}_p{int(q * 100)}_ms_le"] = None if bound is None else bound * 1000
        return out

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


def prefill(db: Path, rows: int, closes_s: float | None = None) -> None:
    """Insert `rows` readings straight into the head (time-ordered, 8,000 series): in the
    current compaction window, or with `closes_s`, in the window that the compactor closes
    (collector.storage.sqlite.compaction_config.GRACE_NS after its end) that many seconds
    from now; it waits for the moment first."""
    from collector.storage.sqlite import store
    from collector.storage.sqlite.compaction_config import GRACE_NS, WINDOW_NS

    t0 = time.time_ns() - rows * 1_000  # recent: the current compaction window
    if closes_s is not None:
        # The previous window closes at this window's start + GRACE_NS: wait until that is
        # closes_s away (at most one window), then fill the previous window's last rows.
        phase = (GRACE_NS - int(closes_s * 1e9)) % WINDOW_NS
        now = time.time_ns()
        time.sleep(((phase - now % WINDOW_NS) % WINDOW_NS) / 1e9)
        t0 = time.time_ns() // WINDOW_NS * WINDOW_NS - rows * 1_000 - 10**9
    store.migrate(db)
    conn = store.connect(db, synchronous="OFF")
    n_series = 8_000
    conn.execute("BEGIN")
    conn.execute(
        f"INSERT INTO {store.DEVICES} (name, token_hash, created_ns) VALUES ('prefill', '', 0)"
    )
    conn.executemany(
        f"INSERT INTO {store.SERIES} (device_id, sensor, kind, unit) "
        "VALUES (1, ?, 'temperature', 'C')",
        [(f"p{i}",) for i in range(n_series)],
    )
    conn.execute("COMMIT")
    chunk = 100_000
    for start in range(0, rows, chunk):
        conn.execute("BEGIN")
        conn.executemany(
            f"INSERT INTO {store.HEAD} (ts, series_id, value) VALUES (?, ?, ?)",
            ((t0 + i * 1_000, i % n_series + 1, 20.5)
             for i in range(start, min(rows, start + chunk))),
        )  # fmt: skip
        conn.execute("COMMIT")
    conn.close()


def is_url(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


@contextlib.contextmanager
def pg_database() -> Iterator[str]:
    """Create `telemetry_bench_<random>` on the local server, yield its URL, drop it."""
    import secrets
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    from tests.storage.pgserver import maintenance_url

    admin = maintenance_url()
    if admin is None:
        raise SystemExit("--pg: no PostgreSQL at 127.0.0.1:5432 (or TELEMETRY_TEST_PG)")
    name = f"telemetry_bench_{secrets.token_hex(6)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield urlunsplit(urlsplit(admin)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def postgres_cpu() -> dict[int, float]:
    """CPU seconds so far of every process named postgres (server, backends), by pid."""
    out: dict[int, float] = {}
    for pr in psutil.process_iter(["name"]):
        if pr.info["name"] == "postgres":
            with contextlib.suppress(psutil.Error):
                t = pr.cpu_times()
                out[pr.pid] = t.user + t.system
    return out


def postgres_cpu_delta(before: dict[int, float]) -> float:
    """CPU the postgres processes used since `before` (a new process counts from 0; one
    that exited in between is lost: the collectors' pooled connections outlive the run)."""
    now = postgres_cpu()
    return sum(t - before.get(pid, 0.0) for pid, t in now.items())


def _pg_rows(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM readings").fetchone()
    return int(row[0]) if row else 0


# ----------------------------------------------------------------------------- clients


async def _connection(
    host: str, port: int, name: str, args: argparse.Namespace, start: _Start,
    res: Result, hold: asyncio.Event | None, connecting: asyncio.Semaphore,
    shared: Shared | None = None,
) -> None:  # fmt: skip
    await connecting.acquire()  # connect in waves: the accept backlog is finite
    reader, writer = await asyncio.open_connection(host, port)
    proto = wire.Connection(wire.Role.AGENT)
    writer.write(proto.send(wire.Hello(device_id=name, token="bench-token", agent="bench")))

    async def next_event() -> wire.Event | None:
        while True:
            ev = proto.next_event()
            if isinstance(ev, wire.Ping):
                writer.write(proto.send(wire.Pong(ev.nonce)))
                continue
            if isinstance(ev, wire.ConnectionClosed):
                return None
            if ev is not wire.NEED_DATA:
                return ev  # type: ignore[return-value]
            data = await reader.read(1 << 16)
            proto.receive_data(data)

    welcome = await next_event()
    connecting.release()
    start.welcomed()
    if not isinstance(welcome, wire.Welcome):
        res.errors.append(f"{name}: {welcome!r}")
        writer.close()
        return
    if hold is not None:  # idle mode: keep the connection open until told
        reader_task = asyncio.create_task(next_event())
        await hold.wait()
        reader_task.cancel()
        writer.close()
        return
    seq = welcome.last_seq
    sent: dict[int, float] = {}
    window = asyncio.Semaphore(args.pipeline)
    interval = args.batch * args.connections / args.rate if args.rate else 0.0
    ts = 0
    clock = DeviceClock(int(name.rsplit("-", 1)[1]), args) if shared is not None else None

    async def receive() -> None:
        while True:
            ev = await next_event()
            if ev is None:
                return
            if isinstance(ev, wire.Ack | wire.Retry):
                t = sent.pop(ev.seq, None)
                window.release()
                if t is not None and isinstance(ev, wire.Ack):
                    res.latencies_ms.append((time.perf_counter() - t) * 1000)
                    res.acked += ev.accepted + ev.duplicate
                    res.batches += 1
                    res.last_ack = time.time()
                    if shared is not None:
                        _count_ack(shared, ev.accepted + ev.duplicate, args.slice)
                else:
                    res.retries += 1
            elif isinstance(ev, wire.Error | wire.Bye):
                res.errors.append(f"{name}: {ev!r}")
                return

    rx = asyncio.create_task(receive())
    go, stop_at = await start.times()
    await asyncio.sleep(max(0.0, go - time.time()) + (hash(name) % 1000) / 1000 * interval)
    next_send = time.monotonic()
    while time.time() < stop_at:
        if interval:
            next_send += interval
            delay = next_send - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await window.acquire()
        if clock is not None:
            assert shared is not None
            total_batch = await _next_total_batch(clock, shared, args)
            if total_batch is None:
                window.release()
                break
            readings = total_batch
        else:
            # Device clocks read "now": every connection appends near the head's right edge.
            ts, readings = now_readings(ts, args.batch)
        seq += 1
        sent[seq] = time.perf_counter()
        if args.grouped and welcome.minor >= wire.GROUPS_MINOR:
            batch = wire.Batch(seq, [], _groups(readings))
        else:
            batch = wire.Batch(seq, readings)
        writer.write(proto.send(batch))
        await writer.drain()
    try:
        async with asyncio.timeout(30):
            for _ in range(args.pipeline):  # every window slot back: nothing in flight
                await window.acquire()
    except TimeoutError:
        res.errors.append(f"{name}: {len(sent)} batches unacked")
    rx.cancel()
    writer.write(proto.send(wire.Bye("done")))
    writer.close()


def _groups(readings: list[list[Any]]) -> list[object]:
    """The readings as series groups. Cheaper than `wire.group_readings` (the load
    processes share the machine with the collector), and enough here: no reading has tags."""
    by: dict[tuple[Any, Any, Any], list[Any]] = {}
    for sensor, kind, ts, value, unit, _tags in readings:
        g = by.get((sensor, kind, unit))
        if g is None:
            g = by[(sensor, kind, unit)] = [sensor, kind, unit, None, [], []]
        g[4].append(ts)
        g[5].append(value)
    return list(by.values())


async def _next_total_batch(
    clock: DeviceClock, shared: Shared, args: argparse.Namespace
) -> list[list[Any]] | None:
    """The device's next batch, or None once --total readings are handed out.

    Devices stay in step: one that is a batch ahead of the average device time waits,
    so the devices' clocks (and the windows they fill) advance together.
    """
    ticks = max(1, args.batch // SENSORS)
    per_tick = args.connections * SENSORS
    while True:
        with shared.sent.get_lock():
            sent = shared.sent.value
            if sent >= args.send_total:
                return None
            if clock.ticks <= sent // per_tick + ticks:
                shared.sent.value = sent + ticks * SENSORS
                break
        await asyncio.sleep(0.02)
    return clock.batch(ticks)


def _count_ack(shared: Shared, n: int, slice_n: int) -> None:
    now = time.time()
    with shared.acked.get_lock():
        before = shared.acked.value
        after = before + n
        shared.acked.value = after
        if before == 0:
            shared.times[0] = now
        for k in range(before // slice_n + 1, min(after // slice_n, len(shared.times) - 1) + 1):
            shared.times[k] = now


def _worker(
    idx: int, names: list[str], args: argparse.Namespace, addrs: list[tuple[str, int]],
    ready: Any, go_q: Any, out: Any, shared: Shared | None = None,
) -> None:  # fmt: skip
    raise_fd_limit()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def main() -> Result:
        res = Result()
        hold = asyncio.Event() if args.idle else None

        async def run_all() -> None:
            sem = asyncio.Semaphore(200)
            # Connection k goes to collector k mod N: round-robin over the collectors.
            await asyncio.gather(
                *(
                    _connection(
                        *addrs[int(n.rsplit("-", 1)[1]) % len(addrs)],
                        n, args, start, res, hold, sem, shared,
                    )
                    for n in names
                )
            )  # fmt: skip

        # The parent says when to connect; once every connection of every worker has its
        # WELCOME, when to start sending and when to stop (idle: only when to connect).
        ready.put(idx)
        await asyncio.to_thread(go_q.get)
        start = _Start(len(names), idx, ready, go_q, cpu_at_go, idle=hold is not None)
        if hold is not None:
            task = asyncio.create_task(run_all())
            await asyncio.to_thread(go_q.get)  # released by the parent after measuring
            hold.set()
            await task
        else:
            await run_all()
        return res

    cpu_at_go: list[float] = []
    res = asyncio.run(main())
    lat = res.latencies_ms
    cpu = time.process_time() - (cpu_at_go[0] if cpu_at_go else 0.0)
    # (acked, batches, retries, errors, latencies, CPU s since the start, last ACK's time)
    out.put((res.acked, res.batches, res.retries, res.errors[:5], lat, cpu, res.last_ack))


class _Start:
    """When a worker's connections start sending: HELLO and WELCOME first, for all of them.

    Each connection reports its WELCOME (`welcomed`); once this worker has them all it tells
    the parent, which sends every worker the same start and stop times (`times`) once all
    have reported. So no batch of the measured load waits behind the collector's HELLO
    commits (one durable commit each, ~1,000 of them take longer than a second on this disk).
    """

    def __init__(
        self, n: int, idx: int, ready: Any, go_q: Any, cpu_at_go: list[float], *, idle: bool
    ) -> None:
        self.left, self.idx, self.ready, self.go_q = n, idx, ready, go_q
        self.cpu_at_go = cpu_at_go
        self.idle = idle
        self._times: asyncio.Future[tuple[float, float]] = (
            asyncio.get_running_loop().create_future()
        )
        self._task: asyncio.Task[None] | None = None
        if n == 0:
            self._task = asyncio.create_task(self._wait_go())

    def welcomed(self) -> None:
        self.left -= 1
        if self.left == 0 and not self.idle:
            self._task = asyncio.create_task(self._wait_go())

    async def _wait_go(self) -> None:
        self.ready.put(self.idx)
        go, stop = await asyncio.to_thread(self.go_q.get)
        # The worker's CPU is counted from the start (connecting and HELLO come before it).
        asyncio.get_running_loop().call_later(
            max(0.0, go - time.time()), lambda: self.cpu_at_go.append(time.process_time())
        )
        self._times.set_result((go, stop))

    async def times(self) -> tuple[float, float]:
        return await self._times


class Clients:
    """The client worker processes of one run: spawned, connected, then started together."""

    def __init__(
        self,
        args: argparse.Namespace,
        addrs: list[tuple[str, int]],
        shared: Shared | None = None,
    ) -> None:
        ctx = mp.get_context("spawn")
        self.ready, self.go_q, self.out = ctx.Queue(), ctx.Queue(), ctx.Queue()
        ready = self.ready
        names = [f"bench-{i}" for i in range(args.connections)]
        self.procs = [
            ctx.Process(target=_worker,
                        args=(i, names[i :: args.processes], args, addrs, ready, self.go_q,
                              self.out, shared))
            for i in range(args.processes)
        ]  # fmt: skip
        for pr in self.procs:
            pr.start()
        for _ in self.procs:
            ready.get(timeout=120)

    def connect(self) -> None:
        """Tell every worker to connect its connections (and send HELLO)."""
        for _ in self.procs:
            self.go_q.put(None)

    def go(self, duration: float, timeout_s: float = 300) -> tuple[float, float]:
        """Once every connection has its WELCOME, tell every worker when to start
        (time.time()) and stop sending; returns (start, stop)."""
        for _ in self.procs:
            self.ready.get(timeout=timeout_s)
        start = time.time() + 0.5
        stop = start + duration
        for _ in self.procs:
            self.go_q.put((start, stop))
        return start, stop

    def results(self, timeout_s: float) -> list[Any]:
        """Each worker's result tuple (see `_worker`), waiting at most `timeout_s` for each."""
        return [self.out.get(timeout=timeout_s) for _ in self.procs]

    def join(self, timeout_s: float = 30) -> None:
        for pr in self.procs:
            pr.join(timeout_s)
            if pr.is_alive():
                pr.kill()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--batch", type=int, default=500, help="readings per BATCH")
    p.add_argument("--pipeline", type=int, default=4, help="unacked batches per connection")
    p.add_argument("--rate", type=float, default=0, help="total readings/s (0: as fast as acked)")
    p.add_argument("--duration", type=float, default=15)
    p.add_argument("--idle", type=int, default=0, help="hold this many idle connections")
    p.add_argument("--prefill", type=int, default=0, help="rows in the DB before the run")
    p.add_argument(
        "--prefill-closes-s", type=float, default=None,
        help="put the prefilled rows in the compaction window that closes this long (<= 30 "
        "s) after the collector starts (waiting up to 2 minutes for that moment), so the "
        "maintenance process compacts them during the load",
    )  # fmt: skip
    p.add_argument(
        "--db",
        help="database file, or a postgresql:// URL passed to the collector as given "
        "(default: a temporary file)",
    )
    p.add_argument(
        "--pg",
        action="store_true",
        help="store in a throwaway PostgreSQL database telemetry_bench_<random> on "
        "127.0.0.1:5432 (dropped after the run)",
    )
    p.add_argument(
        "--collectors",
        type=int,
        default=1,
        help="collector processes on the same database; connections spread round-robin",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--grouped", action="store_true", help="send series groups (GBATCH, protocol v1.2)"
    )
    p.add_argument("--profile", type=Path, help="py-spy the collector; collapsed stacks here")
    p.add_argument(
        "--total",
        type=int,
        default=0,
        help="stream until this many readings are ACKed (replaces --duration)",
    )
    p.add_argument("--slice", type=int, default=1_000_000, help="--total: readings per slice")
    p.add_argument(
        "--interval-s",
        type=float,
        default=10.0,
        help="--total: device time between a sensor's readings",
    )
    p.add_argument(
        "--margin-s",
        type=float,
        default=1800.0,
        help="--total: the last reading's device time is this long before now",
    )
    p.add_argument(
        "--settle-s",
        type=float,
        default=300.0,
        help="--total: after the load, wait this long at most for the head to drain",
    )
    p.add_argument(
        "--max-s",
        type=float,
        default=3600.0,
        help="--total: give up after this many seconds of load",
    )
    p.add_argument(
        "--ingest-workers",
        type=int,
        default=1,
        help="the collector's --ingest-workers (ingest processes sharing the port)",
    )
    p.add_argument("extra", nargs="*", help="extra collector flags, after --")
    args = p.parse_args()
    shared: Shared | None = None
    if args.total:
        if args.idle or args.rate:
            p.error("--total goes with neither --idle nor --rate")
        # Device time from t0 so that the last tick is --margin-s before now (more, as the
        # run takes time): every reading is in the collector's past.
        args.send_total = args.total + args.connections * args.pipeline * args.batch
        ticks = -(-args.send_total // (args.connections * SENSORS)) + 2 * (args.batch // SENSORS)
        args.t0_ns = time.time_ns() - int((ticks * args.interval_s + args.margin_s) * 1e9)
        n_slices = -(-args.total // args.slice)
        spawn = mp.get_context("spawn")
        shared = Shared(spawn.Value("q", 0), spawn.Value("q", 0),
                        spawn.Array("d", n_slices + 1, lock=False))  # fmt: skip
    url = args.db if args.db and is_url(args.db) else None
    if (url or args.pg) and (args.prefill or args.total):
        p.error("--prefill and --total need a SQLite file")
    if args.pg and args.db:
        p.error("--pg or --db, not both")
    if args.collectors < 1:
        p.error("--collectors is at least 1")
    if args.collectors > 1 and (args.total or args.idle):
        p.error("--collectors > 1 goes with neither --total nor --idle")
    with contextlib.ExitStack() as stack:
        if args.pg:
            url = stack.enter_context(pg_database())
        run(args, shared, url)


def run(args: argparse.Namespace, shared: Shared | None, url: str | None) -> None:
    """One run against a SQLite file (`url` None) or the PostgreSQL database `url`."""
    fd_limit = raise_fd_limit()
    if args.idle:
        args.connections = args.idle
    tmp = tempfile.TemporaryDirectory(prefix="telemetry-bench-")
    db = Path(args.db) if args.db and url is None else Path(tmp.name) / "bench.db"
    target: Path | str = url or db
    if args.prefill:
        t = time.perf_counter()
        prefill(db, args.prefill, args.prefill_closes_s)
        print(f"prefilled {args.prefill} rows in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    # Every bench connection comes from 127.0.0.1, so the per-address limit is lifted too.
    limit = str(args.connections + 100)
    flags = ["--max-connections", limit, "--max-connections-per-ip", limit, *args.extra]
    if args.ingest_workers != 1:
        flags += ["--ingest-workers", str(args.ingest_workers)]
    cols: list[Collector] = []
    try:
        for _ in range(args.collectors):
            cols.append(Collector(target, flags))
    except BaseException:
        for c in cols:
            c.stop()
        raise
    col = cols[0]
    addrs = [c.addr for c in cols if c.addr is not None]
    rss0 = col.rss_mb()
    clients = Clients(args, addrs, shared)
    procs, go_q, out = clients.procs, clients.go_q, clients.out
    clients.connect()
    if not args.idle:
        start, _stop = clients.go(args.duration if shared is None else float("inf"))
    report: dict[str, object] = {
        "connections": args.connections, "processes": args.processes, "batch": args.batch,
        "pipeline": args.pipeline, "rate_target": args.rate, "duration_s": args.duration,
        "prefill": args.prefill, "prefill_closes_s": args.prefill_closes_s,
        "fd_limit": fd_limit, "rss_start_mb": round(rss0, 1),
        "store": "postgresql" if url else "sqlite", "collectors": args.collectors,
        "ingest_workers": args.ingest_workers,
    }  # fmt: skip
    if args.idle:
        deadline = time.time() + 120
        last = -1
        while time.time() < deadline:  # wait until every connection is authenticated
            time.sleep(1)
            n = _connected(col)
            if n == last and n >= args.connections * 0.99:
                break
            last = n
        report["idle_connections"] = _connected(col)
        report["rss_mb"] = round(col.rss_mb(), 1)
        # Graceful shutdown with every connection still open: each gets a BYE.
        t_stop = time.monotonic()
        report["collector_exit"] = col.stop()
        report["shutdown_s"] = round(time.monotonic() - t_stop, 2)
        for _ in procs:
            go_q.put(None)
        results = [out.get(timeout=120) for _ in procs]
    else:
        cpu0, child0 = col.cpu_s(), col.children_cpu_s()
        all0 = [c.all_cpu_s() for c in cols]
        pg0 = postgres_cpu()
        busy0 = _machine_busy()
        spy = None
        if args.profile:
            time.sleep(max(0.0, start - time.time()))
            spy = subprocess.Popen(
                ["py-spy", "record", "--pid", str(col.proc.pid), "--duration",
                 str(int(args.duration)), "--format", "raw", "--nonblocking", "--threads",
                 "--subprocesses",
                 "--output", str(args.profile)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        if shared is None:
            results = [out.get(timeout=args.duration + 180) for _ in procs]
            elapsed = args.duration
        else:
            results, elapsed = _watch_total(col, db, shared, args, out, len(procs), report)
            report["duration_s"] = round(elapsed, 1)  # first ACK to last
        cpu = col.cpu_s() - cpu0
        child = col.children_cpu_s() - child0
        all_cpu = sum(c.all_cpu_s() - a for c, a in zip(cols, all0, strict=True))
        pg_cpu = postgres_cpu_delta(pg0)
        busy = _share(_machine_busy(), busy0)
        load_cpu = sum(r[5] for r in results)
        if spy is not None:
            spy.wait(60)
        acked = sum(r[0] for r in results)
        lat = sorted(x for r in results for x in r[4])
        report.update({
            "acked_readings": acked, "batches": sum(r[1] for r in results),
            "retries": sum(r[2] for r in results),
            "readings_per_s": round(acked / elapsed),
            "ack_p50_ms": round(statistics.median(lat), 2) if lat else None,
            "ack_p99_ms": round(lat[int(len(lat) * 0.99) - 1], 2) if lat else None,
            "collector_cpu_s": round(cpu, 1), "maintainer_cpu_s": round(child, 1),
            "collector_cpu_us_per_reading": round(cpu / acked * 1e6, 3) if acked else None,
            "grouped": args.grouped,
            "rss_mb": round(col.rss_mb(), 1), "load_avg_1m": os.getloadavg()[0],
            **col.commit_quantiles(),
        })  # fmt: skip
        # The CPU split of the whole run: every collector (+ its maintenance process), the
        # PostgreSQL processes (0 on SQLite, unless another database is busy), the clients.
        split = {"collectors": all_cpu, "postgres": pg_cpu, "loadgen": load_cpu}
        report.update({f"cpu_s_{k}": round(v, 1) for k, v in split.items()})
        report.update({
            f"cpu_us_per_reading_{k}": round(v / acked * 1e6, 2) if acked else None
            for k, v in split.items()
        })  # fmt: skip
        report["machine_busy"] = round(busy, 2)
        if len(cols) > 1:
            report["rss_mb_per_collector"] = [round(c.rss_mb(), 1) for c in cols]
            report["commit_count_per_collector"] = [
                c.commit_quantiles()["commit_count"] for c in cols
            ]
    errors = [e for r in results for e in r[3]]
    for pr in procs:
        pr.join(30)
    if shared is not None:
        _settle(db, args.settle_s, report)
        report["rss_mb"] = round(col.rss_mb(), 1)
        # The whole run, start-up and compaction after the load included: CPU of the daemon
        # and of its children (the maintenance process, ingest workers) per stored reading.
        settled = report["settled"]
        stored = settled["readings"] if isinstance(settled, dict) else 0
        daemon_s, children_s = col.cpu_s(), col.children_cpu_s()
        report["whole_run"] = {
            "daemon_cpu_s": round(daemon_s, 1),
            "children_cpu_s": round(children_s, 1),
            "us_per_stored_reading": (
                round((daemon_s + children_s) / stored * 1e6, 2) if stored else None
            ),
        }
    if "collector_exit" not in report:
        t_stop = time.monotonic()
        exits = [c.stop() for c in cols]
        report["collector_exit"] = max(exits, key=abs)
        report["shutdown_s"] = round(time.monotonic() - t_stop, 2)
    if errors:
        report["errors"] = errors[:5]
    if url:
        report["rows_in_db"] = _pg_rows(url)
    else:
        conn = sqlite3.connect(db)
        report["rows_in_db"] = conn.execute("SELECT count(*) FROM readings_head").fetchone()[0]
        conn.close()
    tmp.cleanup()
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))


def _db_stats(db: Path, summed: bool = True) -> dict[str, int]:
    """Size and contents of the database, through a read-only connection."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        page_count = conn.execute("PRAGMA page_count").fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        head = conn.execute("SELECT count(*) FROM readings_head").fetchone()[0]
        sql = (
            "SELECT count(*), coalesce(sum(count), 0) FROM blocks"
            if summed
            else ("SELECT count(*), 0 FROM blocks INDEXED BY blocks_by_start")
        )
        blocks, in_blocks = conn.execute(sql).fetchone()
        (small,) = conn.execute(
            "SELECT count(*) FROM blocks WHERE end_ns - start_ns < 3600000000000"
        ).fetchone()  # not merged into their hour's block yet (store.m0003's partial index)
    finally:
        conn.close()
    return {"bytes": page_count * page_size, "pages": page_count, "free_pages": free,
            "head_rows": head,
            "blocks": blocks, "small_blocks": small, "readings_in_blocks": in_blocks}  # fmt: skip


def _machine_busy() -> tuple[float, float]:
    """(busy CPU seconds, all CPU seconds) of the whole machine so far."""
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    return sum(t) - idle, sum(t)


def _machine_steal() -> tuple[float, float]:
    """(CPU seconds the hypervisor gave to others, all CPU seconds) so far (Linux guests)."""
    t = psutil.cpu_times()
    return getattr(t, "steal", 0.0), sum(t)


def _wal_mb(db: Path) -> float:
    try:
        return round(os.path.getsize(f"{db}-wal") / 2**20, 1)
    except OSError:
        return 0.0


def _share(now: tuple[float, float], before: tuple[float, float]) -> float:
    return (now[0] - before[0]) / max(now[1] - before[1], 1e-9)


def _watch_total(
    col: Collector, db: Path, shared: Shared, args: argparse.Namespace, out: Any, n_procs: int,
    report: dict[str, object],
) -> tuple[list[Any], float]:  # fmt: skip
    """Collect the workers' results; note each slice as it completes; report the slices."""
    results: list[Any] = []
    rows: list[dict[str, object]] = []
    cpu_prev = col.cpu_s()
    child_prev = col.children_cpu_s()
    busy_prev = _machine_busy()
    steal_prev = _machine_steal()
    rss_max = col.rss_mb()
    t_start = time.time()
    while len(results) < n_procs:
        try:
            results.append(out.get(timeout=1.0))
        except queue.Empty:
            pass
        rss_max = max(rss_max, col.rss_mb())
        done = min(shared.acked.value // args.slice, len(shared.times) - 1)
        while len(rows) < done:
            k = len(rows)
            dt = shared.times[k + 1] - shared.times[k]
            cpu = col.cpu_s()
            child = col.children_cpu_s()
            busy = _machine_busy()
            steal = _machine_steal()
            stats = _db_stats(db, summed=False)
            rows.append({
                "slice": f"{k * args.slice / 1e6:g}-{(k + 1) * args.slice / 1e6:g}M",
                "readings_per_s": round(args.slice / dt) if dt > 0 else None,
                "seconds": round(dt, 2), "collector_cpu_s": round(cpu - cpu_prev, 1),
                "maintainer_cpu_s": round(child - child_prev, 1),
                "machine_busy": round(_share(busy, busy_prev), 2),
                "steal": round(_share(steal, steal_prev), 3),
                "head_rows": stats["head_rows"], "blocks": stats["blocks"],
                "wal_mb": _wal_mb(db), "load_avg_1m": os.getloadavg()[0],
            })  # fmt: skip
            cpu_prev, child_prev, busy_prev, steal_prev = cpu, child, busy, steal
            print(json.dumps(rows[-1]), file=sys.stderr)
        if time.time() - t_start > args.max_s and "stopped_early_at" not in report:
            with shared.sent.get_lock():  # hand out no more batches; in-flight ones finish
                if shared.sent.value < args.send_total:
                    report["stopped_early_at"] = shared.sent.value
                    shared.sent.value = args.send_total
    acked = shared.acked.value
    last = shared.times[min(acked // args.slice, len(shared.times) - 1)]
    rates = [r["readings_per_s"] for r in rows if isinstance(r["readings_per_s"], int)]
    report["slices"] = rows
    if rates:
        report["slice_summary"] = {
            "first": rates[0], "last": rates[-1], "min": min(rates), "max": max(rates),
            "mean": round(statistics.mean(rates)),
            "last_within_10pct_of_first": abs(rates[-1] - rates[0]) <= 0.1 * rates[0],
        }  # fmt: skip
    report["rss_max_mb"] = round(rss_max, 1)
    report["at_end_of_load"] = _db_stats(db)
    return results, last - shared.times[0]


def _settle(db: Path, limit_s: float, report: dict[str, object]) -> None:
    """Wait (at most limit_s) until the head is compacted, the hours merged and the free
    pages given back (collector.storage.sqlite.store.reclaim_space keeps them under 10% of the
    file), or nothing moved for 45 s (the compactor merges an hour 30 s after its last reading
    arrived); report the compacted file."""
    t0 = time.monotonic()
    stats = _db_stats(db)
    moved = time.monotonic()
    keys = ("head_rows", "small_blocks", "free_pages")
    while time.monotonic() - t0 < limit_s and time.monotonic() - moved < 45:
        reclaimed = stats["free_pages"] < max(
            store.RECLAIM_MIN_FREE_PAGES, stats["pages"] * store.RECLAIM_MIN_FREE_FRACTION
        )
        if stats["head_rows"] == stats["small_blocks"] == 0 and reclaimed:
            break
        time.sleep(5)
        now = _db_stats(db)
        if [now[k] for k in keys] != [stats[k] for k in keys]:
            moved = time.monotonic()
        stats = now
    stored = stats["head_rows"] + stats["readings_in_blocks"]
    report["settled_after_s"] = round(time.monotonic() - t0, 1)
    report["settled"] = {
        **stats,
        "readings": stored,
        "bytes_per_reading": round(stats["bytes"] / stored, 2) if stored else None,
    }
    wal = Path(f"{db}-wal")
    report["file_bytes"] = db.stat().st_size
    report["wal_bytes"] = wal.stat().st_size if wal.exists() else 0


def _connected(col: Collector) -> int:
    return len([c for c in col.ps.net_connections(kind="tcp") if c.status == "ESTABLISHED"]) - 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
