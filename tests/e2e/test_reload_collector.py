"""SIGHUP to a real `telemetry collector` subprocess: reload without dropping connections.

An agent subprocess streams throughout; a raw wire client holds a second connection open.
After each SIGHUP the daemon must still run, neither connection may have been dropped, and
the change must show: a new kinds file admits a new kind on the connection opened before,
replaced TLS files are what new connections see, a bad config leaves the running one in
place with one error line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agents.tls import client_context
from schemas import wire
from tests.collector.wireclient import CollectorProcess, WireClient

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
NS = 1_000_000_000
SOIL = '[kinds.soil_moisture]\ntype = "number"\nunits = ["%"]\nmin = 0\nmax = 100\n'


def wait_for(pred: Callable[[], bool], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def stored(db: Path, device: str) -> int:
    import sqlite3

    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT coalesce(sum(s.count), 0) FROM series s JOIN devices d "
            "ON d.id = s.device_id WHERE d.name = ?",
            (device,),
        ).fetchone()
        return int(row[0])
    finally:
        conn.close()


class Streaming:
    """`python -m agents` streaming a simulated input every 20 ms."""

    def __init__(self, tmp: Path, port: int, device: str, token: str) -> None:
        self.log = tmp / f"{device}.log"
        self.config = tmp / f"{device}.toml"
        self.config.write_text(
            f'[agent]\ndevice_id = "{device}"\ntoken = "{token}"\n'
            f'[collector]\naddress = "127.0.0.1:{port}"\nbackoff_initial_ms = 50\n'
            "backoff_max_ms = 200\nheartbeat_ms = 1000\n"
            "[batch]\nmax_delay_ms = 20\n"
            f'[spool]\npath = "{tmp / (device + ".spool.db")}"\n'
            '[[inputs.simulated]]\nname = "air"\nkind = "temperature"\nunit = "C"\n'
            'interval = "20ms"\n'
        )
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agents", "--config", str(self.config)],
                stdout=subprocess.DEVNULL,
                stderr=fh,
                env=ENV,
            )

    def text(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def hup(daemon: CollectorProcess, nth: int) -> str:
    """Send SIGHUP; returns the daemon's reload line (the nth since it started)."""
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)

    def lines() -> list[str]:
        return [ln for ln in list(daemon.lines) if " collector.reload: " in ln]

    wait_for(lambda: len(lines()) >= nth or daemon.proc.poll() is not None, "a reload line")  # type: ignore[union-attr]
    assert daemon.proc.poll() is None, "the collector exited on SIGHUP:\n" + daemon.log
    return lines()[nth - 1]


@pytest.fixture
def agents_to_stop() -> Iterator[list[Streaming]]:
    started: list[Streaming] = []
    yield started
    for a in started:
        a.stop()


def test_sighup_reloads_kinds_and_log_level_without_dropping_connections(
    tmp_path: Path, agents_to_stop: list[Streaming]
) -> None:
    kinds = tmp_path / "kinds.toml"
    kinds.write_text("# no kinds of our own yet\n")
    conf = tmp_path / "collector.toml"
    base = f'kinds = "{kinds}"\nlog_level = "INFO"\n'
    conf.write_text(base)
    db = tmp_path / "t.db"
    with CollectorProcess(db, "--config", str(conf)) as daemon:
        agent = Streaming(tmp_path, daemon.ingest[1], "stream-1", daemon.add_device("stream-1"))
        agents_to_stop.append(agent)
        wait_for(lambda: stored(db, "stream-1") > 0, "the agent's first readings")
        probe = WireClient(*daemon.ingest)
        assert isinstance(probe.hello("probe-1", daemon.add_device("probe-1")), wire.Welcome)
        ts = 1_750_000_000 * NS
        soil: list[object] = ["soil", "soil_moisture", ts, 41.5, "%", None]
        ack = probe.batch(1, [soil])
        assert isinstance(ack, wire.Ack) and ack.accepted == 0 and len(ack.rejects) == 1

        kinds.write_text(SOIL)
        line = hup(daemon, 1)
        assert "soil_moisture" in line, line
        ack = probe.batch(2, [soil])  # same connection, opened before the reload
        assert isinstance(ack, wire.Ack) and ack.accepted == 1, ack
        before = stored(db, "stream-1")
        wait_for(lambda: stored(db, "stream-1") > before + 5, "readings after the reload")

        conf.write_text("kinds = [\n")  # not TOML
        line = hup(daemon, 2)
        assert "ERROR" in line and "keeping the running config" in line, line
        assert "not valid TOML" in line
        ack = probe.batch(3, [["soil", "soil_moisture", ts + 1, 42.0, "%", None]])
        assert isinstance(ack, wire.Ack) and ack.accepted == 1, ack

        conf.write_text(base.replace("INFO", "DEBUG") + 'retention = "30d"\n')
        line = hup(daemon, 3)
        assert "log_level INFO -> DEBUG" in line, line
        assert "not applied, needs a restart: retention unset -> 30d" in line, line

        probe.send(wire.Ping(7))
        assert probe.recv() == wire.Pong(7)
        probe.close()
        assert agent.proc.poll() is None
        assert agent.text().count("connected collector=") == 1, agent.text()
        assert "link down" not in agent.text()
        assert daemon.terminate() == 0


def test_sighup_with_nothing_changed_says_so(tmp_path: Path) -> None:
    with CollectorProcess(tmp_path / "t.db") as daemon:
        line = hup(daemon, 1)
        assert "nothing changed" in line, line
        assert daemon.terminate() == 0


def _pki(d: Path) -> Path:
    from collector import certs

    certs.create_ca(d)
    certs.issue(d, "collector", server=True, hosts=("127.0.0.1",))
    return d


def test_sighup_replaces_tls_certificates_for_new_connections(tmp_path: Path) -> None:
    old, new = _pki(tmp_path / "old"), _pki(tmp_path / "new")
    live = tmp_path / "live"
    live.mkdir()
    for name in ("collector.pem", "collector.key"):
        (live / name).write_bytes((old / name).read_bytes())
    args = ("--tls-cert", str(live / "collector.pem"), "--tls-key", str(live / "collector.key"))
    with CollectorProcess(tmp_path / "t.db", *args) as daemon:
        token = daemon.add_device("tls-1")
        trusts_old = client_context(old / "ca.pem")
        trusts_new = client_context(new / "ca.pem")
        held = WireClient(*daemon.ingest, ssl_context=trusts_old)
        assert isinstance(held.hello("tls-1", token), wire.Welcome)

        for name in ("collector.pem", "collector.key"):
            (live / name).write_bytes((new / name).read_bytes())
        line = hup(daemon, 1)
        assert "tls" in line and "replaced" in line, line

        with WireClient(*daemon.ingest, ssl_context=trusts_new) as c:
            # Another stream: a second session of the held one's stream would replace it.
            assert isinstance(c.hello("tls-1", token, stream="after-reload"), wire.Welcome)
        with pytest.raises(OSError):  # ssl.SSLCertVerificationError
            WireClient(*daemon.ingest, ssl_context=trusts_old).close()
        held.send(wire.Ping(1))  # the connection made before the reload is still up
        assert held.recv() == wire.Pong(1)
        held.close()
        assert daemon.terminate() == 0
