"""Shared parts of the fault-injection suite: agent subprocesses, devices, and stored counts.

Counting is exact because every agent input is `simulated` with `kind = "counter"`,
`waveform = "constant"`, `base = 0` and a `count`: each sensor's values are 1, 2, ..., count,
one per sample, so "every reading taken, stored exactly once" is "each sensor's stored
values are exactly 1..n". Stored readings are read back through
`collector.storage.sqlite.scan.read_range` (head and compacted blocks, each reading once), and the
raw row counts of both tables are checked beside it so a reading kept twice (head and block) cannot
hide.

Only loopback addresses; every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import msgpack

from collector.storage.factory import open_storage
from collector.storage.interface import Filters
from collector.storage.sqlite import devices, scan, store
from schemas import wire
from schemas.errors import RemoteProtocolError
from tests.collector.wireclient import WireClient

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
TS0 = 1_700_000_000_000_000_000


# Figures each scenario measured, printed in the terminal summary (see conftest.py) and
# appended as JSON lines to $RELIABILITY_FIGURES when that is set.
FIGURES: list[tuple[str, dict[str, float]]] = []


def report(scenario: str, figures: dict[str, float]) -> None:
    """Record one scenario's figures for the end-of-run summary."""
    FIGURES.append((scenario, figures))
    path = os.environ.get("RELIABILITY_FIGURES")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"scenario": scenario, **figures}) + "\n")


def wait_for(pred: Callable[[], bool], what: str, within: float = 60.0) -> float:
    """Poll `pred` until true; returns the seconds it took. Raises AssertionError on timeout."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > within:
            raise AssertionError(f"timed out after {within:g} s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - t0


def _url(db: Path | str) -> str | None:
    """The PostgreSQL URL `db` is, or None for an SQLite file."""
    return db if isinstance(db, str) and "://" in db else None


def add_devices(db: Path | str, names: Iterable[str]) -> dict[str, str]:
    """Register devices straight in the registry (faster than one CLI process each)."""
    if (url := _url(db)) is not None:
        storage = open_storage(url)
        try:
            return {n: storage.add_device(n, time.time_ns())[1] for n in names}
        finally:
            storage.close()
    assert isinstance(db, Path)
    store.migrate(db)
    conn = store.connect(db)
    try:
        return {n: devices.add_device(conn, n, time.time_ns())[1] for n in names}
    finally:
        conn.close()


def ro(db: Path) -> sqlite3.Connection:
    return store.connect(db, readonly=True)


def integrity(db: Path | str) -> str:
    if _url(db) is not None:
        return "ok"  # PostgreSQL keeps its own consistency; nothing to check from here
    assert isinstance(db, Path)
    conn = ro(db)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def committed_total(db: Path | str) -> int:
    """Readings committed so far (series.count is kept in the ingest transaction)."""
    if (url := _url(db)) is not None:
        storage = open_storage(url, readonly=True)
        try:
            return sum(s.count for s in storage.resolve_series(Filters()))
        finally:
            storage.close()
    assert isinstance(db, Path)
    conn = ro(db)
    try:
        return int(conn.execute("SELECT coalesce(sum(count), 0) FROM series").fetchone()[0])
    except sqlite3.OperationalError:  # tables not created yet
        return 0
    finally:
        conn.close()


@dataclass
class Stored:
    """What the collector holds, per (device, sensor): every value, in time order."""

    values: dict[tuple[str, str], list[scan.Value]]
    head_rows: int
    block_rows: int

    def ints(self, key: tuple[str, str]) -> list[int]:
        """One series' values as ints (counters); a missing series is empty."""
        return [int(v) for v in self.values.get(key, []) if v is not None]

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.values.values())


def stored(db: Path | str, device: str | None = None) -> Stored:
    """Everything stored (or one device's readings), read back through
    collector.storage.sqlite.scan (PostgreSQL: through the storage interface)."""
    if (url := _url(db)) is not None:
        storage = open_storage(url, readonly=True)
        try:
            series = storage.resolve_series(Filters(devices=(device,) if device else ()))
            keys = {s.id: (s.device, s.sensor) for s in series}
            by_key: dict[tuple[str, str], list[scan.Value]] = defaultdict(list)
            for sid, _ts, value in storage.read_range(sorted(keys), None, None):
                by_key[keys[sid]].append(value)
            # No head/blocks split: every row read is a stored row.
            return Stored(dict(by_key), sum(len(v) for v in by_key.values()), 0)
        finally:
            storage.close()
    conn = ro(Path(db))
    where, args = ("WHERE d.name = ?", (device,)) if device is not None else ("", ())
    try:
        ids = {
            int(sid): (str(dev), str(sensor))
            for sid, dev, sensor in conn.execute(
                "SELECT s.id, d.name, s.sensor FROM series s "
                f"JOIN devices d ON d.id = s.device_id {where}",
                args,
            )
        }
        values: dict[tuple[str, str], list[scan.Value]] = defaultdict(list)
        for sid, _ts, value in scan.read_range(conn, sorted(ids), None, None):
            values[ids[sid]].append(value)
        marks = ",".join("?" * len(ids))
        head = int(
            conn.execute(
                f"SELECT count(*) FROM {store.HEAD} WHERE series_id IN ({marks})", list(ids)
            ).fetchone()[0]
        )
        blk = int(
            conn.execute(
                f"SELECT coalesce(sum(count), 0) FROM {store.BLOCKS} WHERE series_id IN ({marks})",
                list(ids),
            ).fetchone()[0]
        )
        return Stored(dict(values), head, blk)
    finally:
        conn.close()


def counter_input(names: list[str], count: int, interval: str = "10ms") -> str:
    """One simulated counter input: every name gets values exactly 1..count."""
    quoted = ", ".join(f'"{n}"' for n in names)
    return (
        f'[[inputs.simulated]]\nnames = [{quoted}]\nkind = "counter"\ninterval = "{interval}"\n'
        f'waveform = "constant"\nbase = 0\ncount = {count}\n'
    )


class Agent:
    """`python -m agents` as a subprocess with its own spool and log file."""

    def __init__(self, tmp: Path, device: str, token: str) -> None:
        self.device = device
        self.token = token
        self.config = tmp / f"{device}.toml"
        self.logfile = tmp / f"{device}.log"
        self.spool = tmp / f"{device}.spool.db"
        self.proc: subprocess.Popen[bytes] | None = None

    def configure(
        self,
        port: int,
        inputs: str,
        *,
        backoff_max_ms: int = 500,
        heartbeat_ms: int = 1000,
        batch: int = 500,
        spool_max: int = 2_000_000,
    ) -> None:
        self.config.write_text(
            f'[agent]\ndevice_id = "{self.device}"\ntoken = "{self.token}"\n'
            f'[collector]\naddress = "127.0.0.1:{port}"\n'
            f"backoff_initial_ms = 50\nbackoff_max_ms = {backoff_max_ms}\n"
            f"heartbeat_ms = {heartbeat_ms}\nconnect_timeout_ms = 2000\n"
            f"[batch]\nmax_readings = {batch}\nmax_delay_ms = 50\n"
            f'[spool]\npath = "{self.spool}"\nmax_readings = {spool_max}\n'
            f"{inputs}"
        )

    def start(self) -> Agent:
        with open(self.logfile, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agents", "--config", str(self.config)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=ENV,
            )
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def text(self) -> str:
        return self.logfile.read_text() if self.logfile.exists() else ""

    def finished_inputs(self) -> int:
        return self.text().count("input finished its sample count")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def spooled(self) -> dict[str, list[int]]:
        """Readings still in the spool (pending or sealed): sensor -> values."""
        out: dict[str, list[int]] = defaultdict(list)
        if not self.spool.exists():
            return {}
        conn = sqlite3.connect(self.spool)
        try:
            for (body,) in conn.execute("SELECT body FROM readings"):
                r = msgpack.unpackb(body, raw=False)
                out[r[0]].append(int(r[3]))
        finally:
            conn.close()
        return dict(out)

    def dropped_total(self) -> int:
        if not self.spool.exists():
            return 0
        conn = sqlite3.connect(self.spool)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'dropped_total'").fetchone()
            return int(row[0]) if row else 0
        finally:
            conn.close()


def assert_exactly_once(st: Stored, expected: dict[tuple[str, str], int]) -> None:
    """Each (device, sensor) holds exactly the values 1..n once; nothing else is stored."""
    missing = {k: n for k, n in expected.items() if k not in st.values}
    assert not missing, f"series never stored: {sorted(missing)[:5]}"
    extra = set(st.values) - set(expected)
    assert not extra, f"unexpected series: {sorted(extra)[:5]}"
    for key, n in expected.items():
        got = st.ints(key)
        if sorted(got) != list(range(1, n + 1)):
            seen: dict[object, int] = defaultdict(int)
            for v in got:
                seen[v] += 1
            dups = [v for v, c in seen.items() if c > 1]
            lost = sorted(set(range(1, n + 1)) - set(seen))
            raise AssertionError(
                f"{key}: {len(got)} stored, want {n}; duplicated {dups[:5]}, missing {lost[:5]}"
            )
    want = sum(expected.values())
    assert st.head_rows + st.block_rows == want, (st.head_rows, st.block_rows, want)


class Streamer(threading.Thread):
    """A raw protocol client that streams numbered batches and records what was ACKed.

    After a lost connection it reconnects, learns `last_seq` from WELCOME and continues from
    the first batch the collector has not committed, as the protocol says an agent must.
    """

    SENSORS = 10

    def __init__(
        self, device: str, token: str, batches: int, port: list[int], pace_s: float = 0.0
    ) -> None:
        super().__init__(daemon=True)
        self.device, self.token, self.batches, self.port = device, token, batches, port
        self.pace_s = pace_s
        self.acked_seq = 0
        self.reconnects = 0
        self.retries = 0
        self.last_error = ""
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()

    def expected(self, batches: int | None = None) -> dict[tuple[str, str], int]:
        """The series this streamer writes and how many values each holds once done."""
        n = self.batches if batches is None else batches
        return {(self.device, f"stream/s{i}"): n for i in range(self.SENSORS)}

    def readings(self, seq: int) -> list[object]:
        ts = TS0 + seq * 1_000
        return [[f"stream/s{i}", "counter", ts, seq, None, None] for i in range(self.SENSORS)]

    def run(self) -> None:
        seq = 1
        deadline = time.monotonic() + 600
        while seq <= self.batches and not self.stop_flag.is_set():
            if time.monotonic() > deadline:
                return
            try:
                with WireClient("127.0.0.1", self.port[0], timeout=5.0) as c:
                    welcome = c.hello(self.device, self.token)
                    if not isinstance(welcome, wire.Welcome):
                        raise ConnectionError(repr(welcome))
                    seq = welcome.last_seq + 1
                    with self.lock:
                        self.acked_seq = max(self.acked_seq, welcome.last_seq)
                    while seq <= self.batches and not self.stop_flag.is_set():
                        ans = c.batch(seq, self.readings(seq))
                        if isinstance(ans, wire.Ack):
                            assert ans.seq == seq and not ans.rejects
                            with self.lock:
                                self.acked_seq = seq
                            seq += 1
                            if self.pace_s:
                                self.stop_flag.wait(self.pace_s)  # a steady rate, not a sync
                        elif isinstance(ans, wire.Retry):
                            self.retries += 1
                            time.sleep(ans.retry_after_ms / 1000)  # the protocol's RETRY wait
                        else:
                            raise ConnectionError(repr(ans))
            except (OSError, ConnectionError, TimeoutError, RemoteProtocolError) as exc:
                self.last_error = repr(exc)
                self.reconnects += 1
                self.stop_flag.wait(0.05)  # reconnect pacing, not synchronisation
