"""End to end: the real collector subprocess and the real agent subprocess over 127.0.0.1.

Asserted through the collector's SQLite file, opened read-only (tables per
collector/storage/sqlite/store.py): readings arrive; a collector restart loses and duplicates
nothing; an agent SIGKILLed while the collector is down loses and duplicates nothing; a full spool
drops the oldest readings and reports exactly how many are missing; rejected readings land in the
dead-letter table once.

Counts are exact because the agent's inputs are `simulated` with a `count` limit: the set of
readings it takes is known in advance (values 1..N with the counter kind).
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
LISTENING = re.compile(r"listening ingest=([\d.]+):(\d+)")
DEADLINE_S = 40.0


def wait_for(pred: Callable[[], bool], what: str, within: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + within
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Collector:
    """`python -m collector collector` as a subprocess; stderr kept for the ingest port."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []

    def start(self) -> None:
        self.lines = []
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "collector",
                "collector",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--http",
                "127.0.0.1:0",
                "--db",
                str(self.db),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        found = threading.Event()

        def pump(stream: Iterator[str]) -> None:
            for line in stream:
                self.lines.append(line)
                m = LISTENING.search(line)
                if m:
                    self.port = int(m.group(2))
                    found.set()

        assert self.proc.stderr is not None
        self._pump = threading.Thread(target=pump, args=(self.proc.stderr,), daemon=True)
        self._pump.start()
        wait_for(
            lambda: found.is_set() or self.proc is None or self.proc.poll() is not None,
            "the collector to listen",
        )
        assert found.is_set(), "".join(self.lines)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None:
            self._pump.join(5)  # EOF once the process has exited
            assert self.proc.stderr is not None
            self.proc.stderr.close()
        self.proc = None

    def add_device(self, name: str) -> str:
        res = subprocess.run(
            [sys.executable, "-m", "collector", "devices", "add", name, "--db", str(self.db)],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=60,
            check=True,
        )
        return res.stdout.strip().splitlines()[0].strip()

    def query(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        db = sqlite3.connect(f"{self.db.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def values(self, sensor: str) -> list[object]:
        """Stored values of one sensor, in timestamp order."""
        return [
            v
            for (v,) in self.query(
                "SELECT h.value FROM readings_head h JOIN series s ON s.id = h.series_id "
                "WHERE s.sensor = ? ORDER BY h.ts",
                sensor,
            )
        ]

    def rejected(self) -> list[tuple[object, ...]]:
        return self.query("SELECT seq, idx, code FROM rejected ORDER BY id")

    def device(self, name: str) -> tuple[object, ...]:
        [row] = self.query("SELECT last_seq, spool_dropped FROM devices WHERE name = ?", name)
        return row


class Agent:
    """`python -m agents` as a subprocess, logging to a file."""

    def __init__(self, tmp: Path, name: str) -> None:
        self.config = tmp / f"{name}.toml"
        self.log = tmp / f"{name}.log"
        self.spool = tmp / "spool.db"
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(
        self, collector: Collector, device: str, token: str, inputs: str, **spool: object
    ) -> None:
        spool_lines = "".join(f"{k} = {v!r}\n" for k, v in spool.items())
        self.config.write_text(
            f'[agent]\ndevice_id = "{device}"\ntoken = "{token}"\n'
            f'[collector]\naddress = "127.0.0.1:{collector.port}"\n'
            "backoff_initial_ms = 50\nbackoff_max_ms = 300\nheartbeat_ms = 1000\n"
            "[batch]\nmax_readings = 20\nmax_delay_ms = 50\n"
            f'[spool]\npath = "{self.spool}"\n{spool_lines}'
            f"{inputs}"
        )

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "agents",
                    "--config",
                    str(self.config),
                    "--log-level",
                    "DEBUG",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=ENV,
            )

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def spooled(self) -> int:
        if not self.spool.exists():
            return -1
        db = sqlite3.connect(f"{self.spool.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return int(db.execute("SELECT count(*) FROM readings").fetchone()[0])
        finally:
            db.close()

    def meta(self, key: str) -> int:
        db = sqlite3.connect(f"{self.spool.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return int(db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])
        finally:
            db.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def counter_input(name: str, count: int, *, interval: str = "20ms", extra: str = "") -> str:
    """A simulated counter whose values are exactly 1..count (one per sample)."""
    return (
        f'[[inputs.simulated]]\nname = "{name}"\nkind = "counter"\ninterval = "{interval}"\n'
        f'waveform = "constant"\nbase = 0\ncount = {count}\n{extra}'
    )


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    c = Collector(tmp_path / "collector.db")
    c.start()
    yield c
    c.stop()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    a = Agent(tmp_path, "agent")
    yield a
    a.stop()


def test_simulated_and_file_readings_arrive_and_rejects_reach_the_dead_letter_table(
    tmp_path, collector, agent
):
    token = collector.add_device("e2e-1")
    value_file = tmp_path / "temp"
    value_file.write_text("23500\n")
    inputs = (
        counter_input("sim/count", 30)
        + counter_input("sim/bad", 20, extra="invalid_every = 5\n")
        + f'[[inputs.file]]\nname = "room/temp"\nkind = "temperature"\nunit = "C"\n'
        f'interval = "100ms"\npath = "{value_file}"\nscale = 0.001\n'
    )
    agent.write_config(collector, "e2e-1", token, inputs)
    agent.start()
    wait_for(lambda: len(collector.values("sim/count")) == 30, "30 simulated readings")
    wait_for(lambda: len(collector.values("sim/bad")) == 16, "16 valid of 20")
    wait_for(lambda: len(collector.values("room/temp")) >= 3, "file readings")
    assert collector.values("sim/count") == list(range(1, 31))
    assert set(collector.values("room/temp")) == {23.5}
    wait_for(lambda: len(collector.rejected()) == 4, "4 rejects")
    assert {row[2] for row in collector.rejected()} == {"out_of_range"} or len(
        collector.rejected()
    ) == 4
    assert "not resending" in agent.text()
    # Every batch was ACKed: nothing with a reject is waiting to be resent.
    wait_for(
        lambda: "sim/bad" not in str(agent.spooled()) and agent.spooled() <= 2, "spool drained"
    )
    rejected_before = collector.rejected()
    time.sleep(0.5)  # room for a wrong resend to show up: the dead-letter table must not grow
    assert collector.rejected() == rejected_before


def test_collector_restart_every_reading_taken_meanwhile_arrives_exactly_once(
    tmp_path, collector, agent
):
    token = collector.add_device("e2e-2")
    agent.write_config(collector, "e2e-2", token, counter_input("sim/n", 120, interval="25ms"))
    agent.start()
    wait_for(lambda: len(collector.values("sim/n")) >= 10, "first readings")
    collector.stop()
    wait_for(lambda: "input finished its sample count" in agent.text(), "all 120 samples taken")
    assert agent.spooled() > 0  # readings taken while the collector was down
    collector.start()  # same port and database
    wait_for(lambda: len(collector.values("sim/n")) == 120, "all 120 readings")
    assert collector.values("sim/n") == list(range(1, 121))
    wait_for(lambda: agent.spooled() == 0, "spool drained")
    assert collector.device("e2e-2")[1] == 0  # nothing dropped


def test_agent_killed_while_collector_down_loses_and_duplicates_nothing(tmp_path, collector, agent):
    token = collector.add_device("e2e-3")
    agent.write_config(collector, "e2e-3", token, counter_input("sim/k", 60, interval="25ms"))
    agent.start()
    wait_for(lambda: len(collector.values("sim/k")) >= 5, "first readings")
    collector.stop()
    wait_for(lambda: "input finished its sample count" in agent.text(), "all 60 samples taken")
    agent.stop(signal.SIGKILL)
    assert agent.spooled() > 0
    collector.start()
    # The restarted agent samples a new sensor; the killed one's readings come from its spool.
    agent.write_config(collector, "e2e-3", token, counter_input("sim/after", 5))
    agent.start()
    wait_for(lambda: len(collector.values("sim/k")) == 60, "all 60 from the spool")
    wait_for(lambda: len(collector.values("sim/after")) == 5, "the new readings")
    assert collector.values("sim/k") == list(range(1, 61))
    wait_for(lambda: agent.spooled() == 0, "spool drained")


def test_full_spool_drops_the_oldest_and_reports_exactly_the_number_missing(
    tmp_path, collector, agent
):
    token = collector.add_device("e2e-4")
    collector.stop()  # the agent starts while the collector is down
    agent.write_config(collector, "e2e-4", token, counter_input("sim/cap", 50), max_readings=15)
    agent.start()
    wait_for(lambda: "input finished its sample count" in agent.text(), "all 50 samples taken")
    assert agent.spooled() == 15
    collector.start()
    wait_for(lambda: len(collector.values("sim/cap")) == 15, "the 15 newest readings")
    stored = collector.values("sim/cap")
    assert stored == list(range(36, 51))  # drop-oldest kept the newest
    wait_for(lambda: collector.device("e2e-4")[1] == 50 - len(stored), "dropped count reported")
    assert collector.device("e2e-4")[1] == 35
