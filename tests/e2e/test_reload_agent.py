"""SIGHUP to a real `telemetry agent` subprocess streaming to a real collector subprocess.

The agent reads its config again: a new input starts, unchanged inputs keep running, the
connection and the spool stay (same collector, device and token), and a bad config leaves
the running one in place with one error line. The process never exits on SIGHUP.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.collector.wireclient import CollectorProcess

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def wait_for(pred: Callable[[], bool], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def stored(db: Path, sensor: str) -> int:
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT coalesce(sum(count), 0) FROM series WHERE sensor = ?", (sensor,)
        ).fetchone()
        return int(row[0])
    finally:
        conn.close()


def simulated(name: str) -> str:
    return (
        f'[[inputs.simulated]]\nname = "{name}"\nkind = "temperature"\nunit = "C"\n'
        'interval = "20ms"\n'
    )


class AgentProcess:
    def __init__(self, tmp: Path, port: int, token: str) -> None:
        self.tmp = tmp
        self.log = tmp / "agent.log"
        self.config = tmp / "agent.toml"
        self.head = (
            f'[agent]\ndevice_id = "hup-1"\ntoken = "{token}"\n'
            f'[collector]\naddress = "127.0.0.1:{port}"\nbackoff_initial_ms = 50\n'
            "backoff_max_ms = 200\nheartbeat_ms = 1000\n[batch]\nmax_delay_ms = 20\n"
        )
        self.spool = f'[spool]\npath = "{tmp / "spool.db"}"\n'
        self.proc: subprocess.Popen[bytes] | None = None

    def write(self, text: str) -> None:
        self.config.write_text(text)

    def start(self) -> None:
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agents", "--config", str(self.config)],
                stdout=subprocess.DEVNULL,
                stderr=fh,
                env=ENV,
            )

    def text(self) -> str:
        return self.log.read_text()

    def reload_lines(self) -> list[str]:
        return [ln for ln in self.text().splitlines() if " agents.reload: " in ln]

    def hup(self, nth: int) -> str:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: len(self.reload_lines()) >= nth or self.proc.poll() is not None,  # type: ignore[union-attr]
            "the agent's reload line",
        )
        assert self.proc.poll() is None, "the agent exited on SIGHUP:\n" + self.text()
        return self.reload_lines()[nth - 1]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[CollectorProcess, AgentProcess]]:
    with CollectorProcess(tmp_path / "c.db") as daemon:
        agent = AgentProcess(tmp_path, daemon.ingest[1], daemon.add_device("hup-1"))
        try:
            yield daemon, agent
        finally:
            agent.stop()


def test_sighup_starts_a_new_input_and_keeps_connection_and_spool(
    setup: tuple[CollectorProcess, AgentProcess],
) -> None:
    daemon, agent = setup
    agent.write(agent.head + agent.spool + simulated("air"))
    agent.start()
    wait_for(lambda: stored(daemon.db, "air") > 0, "the first input's readings")

    agent.write(agent.head + agent.spool + simulated("air") + simulated("soil"))
    line = agent.hup(1)
    assert "inputs.simulated[1]" in line and "kept 1" in line, line
    wait_for(lambda: stored(daemon.db, "soil") > 5, "the new input's readings")
    air = stored(daemon.db, "air")
    wait_for(lambda: stored(daemon.db, "air") > air + 5, "the kept input to go on")

    agent.write(agent.head + "[spool\n")
    line = agent.hup(2)
    assert "ERROR" in line and "keeping the running config" in line, line
    soil = stored(daemon.db, "soil")
    wait_for(lambda: stored(daemon.db, "soil") > soil + 5, "readings after a bad reload")

    other_spool = f'[spool]\npath = "{agent.tmp / "other.db"}"\n'
    agent.write(agent.head + other_spool + simulated("air"))
    line = agent.hup(3)
    assert "-inputs.simulated[1]" in line, line
    assert "not applied, needs a restart: spool.path" in line, line

    text = agent.text()
    assert text.count("connected collector=") == 1, text
    assert "link down" not in text
    assert "disconnected device=hup-1" not in daemon.log
    assert not (agent.tmp / "other.db").exists()


def test_sighup_with_a_new_collector_address_and_token_moves_there(
    tmp_path: Path, setup: tuple[CollectorProcess, AgentProcess]
) -> None:
    daemon, agent = setup
    agent.write(agent.head + agent.spool + simulated("air"))
    agent.start()
    wait_for(lambda: stored(daemon.db, "air") > 0, "the first readings")
    line = agent.hup(1)
    assert "nothing changed" in line, line

    with CollectorProcess(tmp_path / "second.db") as second:
        token = second.add_device("hup-1")
        moved = AgentProcess(tmp_path, second.ingest[1], token)
        agent.write(moved.head + agent.spool + simulated("air"))
        line = agent.hup(2)
        assert f"collector 127.0.0.1:{daemon.ingest[1]} -> 127.0.0.1:{second.ingest[1]}" in line
        assert "token changed" in line and "reconnecting" in line, line
        assert token not in agent.text()
        wait_for(lambda: stored(second.db, "air") > 5, "readings at the new collector")
        assert agent.proc is not None and agent.proc.poll() is None


def test_renewed_certificates_on_both_ends_are_picked_up_by_reloads(tmp_path: Path) -> None:
    """The collector's certificate moves to a new CA; each end is reloaded in turn."""
    from collector import certs

    pki = {}
    for name in ("old", "new"):
        d = pki[name] = tmp_path / name
        certs.create_ca(d)
        certs.issue(d, "collector", server=True, hosts=("127.0.0.1",))
    live = tmp_path / "live"
    live.mkdir()

    def install(name: str, *files: str) -> None:
        for f in files:
            (live / f).write_bytes((pki[name] / f).read_bytes())

    install("old", "collector.pem", "collector.key", "ca.pem")
    args = ("--tls-cert", str(live / "collector.pem"), "--tls-key", str(live / "collector.key"))
    with CollectorProcess(tmp_path / "c.db", *args) as daemon:
        agent = AgentProcess(tmp_path, daemon.ingest[1], daemon.add_device("hup-1"))
        tls = f'[tls]\nenabled = true\nca_file = "{live / "ca.pem"}"\n'
        agent.write(agent.head + tls + agent.spool + simulated("air"))
        try:
            agent.start()
            wait_for(lambda: stored(daemon.db, "air") > 0, "readings over TLS")

            install("new", "collector.pem", "collector.key")
            assert daemon.proc is not None
            daemon.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "tls certificates replaced" in daemon.log, "the collector's reload")
            air = stored(daemon.db, "air")  # the open connection keeps streaming
            wait_for(lambda: stored(daemon.db, "air") > air + 5, "readings after it")

            install("new", "ca.pem")
            line = agent.hup(1)
            assert "[tls] files changed: reconnecting" in line, line
            wait_for(lambda: agent.text().count("connected collector=") == 2, "a reconnect")
            air = stored(daemon.db, "air")
            wait_for(lambda: stored(daemon.db, "air") > air + 5, "readings over the new chain")
            assert "certificate was refused" not in agent.text()
        finally:
            agent.stop()
