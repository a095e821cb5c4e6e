"""Scale-out end to end: real HAProxy (the example config, deploy/haproxy/haproxy.cfg) in front
of two collector processes sharing one database, real agents streaming counters through it.
One collector is SIGKILLed mid-stream; the agents come back through HAProxy to the other.

Afterwards every reading taken is stored exactly once, every ACKed batch of a raw streamer is
there, nothing else is; and the collectors' logs show the agents' own addresses, which only
the PROXY v2 header carries: HAProxy connects to the collectors from 127.0.0.3
(`source`), the agents connect to HAProxy from 127.0.0.1.

Needs the `haproxy` binary (Debian: apt-get install haproxy).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.collector.wireclient import CollectorProcess
from tests.reliability.harness import (
    ENV,
    Agent,
    Streamer,
    add_devices,
    assert_exactly_once,
    committed_total,
    counter_input,
    integrity,
    report,
    stored,
    wait_for,
)
from tests.storage.pgserver import throwaway_database

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
HAPROXY = shutil.which("haproxy") or next(
    (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)), None
)
if HAPROXY is None:
    if os.environ.get("CI") == "true":
        pytest.fail("haproxy is required in CI (Debian package haproxy)", pytrace=False)
    pytest.skip("needs haproxy: apt-get install haproxy", allow_module_level=True)

# HAProxy's own address towards the collectors: not the agents' 127.0.0.1.
PROXY_SOURCE = "127.0.0.3"
AGENTS = 3
SENSORS = 20
SAMPLES = 500  # per sensor, one every 10 ms: ~5 s of streaming per agent
STREAMER_BATCHES = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def haproxy_config(port: int, collectors: list[CollectorProcess]) -> str:
    """The example config, listening on `port` and pointing at these collectors."""
    text = EXAMPLE.read_text()
    text, n = re.subn(r"(?m)^    bind :7878$", f"    bind 127.0.0.1:{port}", text)
    assert n == 1
    servers = ""
    for i, c in enumerate(collectors, 1):
        assert c.http is not None
        servers += f"    server collector-{i} 127.0.0.1:{c.ingest[1]} port {c.http[1]}\n"
    text, n = re.subn(r"(?m)^    server collector-\d .*\n", "", text)
    assert n == len(collectors)
    # The example's maxconn needs ~2x as many file descriptors; a test needs few.
    text = re.sub(r"(?m)^    maxconn \d+$", "    maxconn 1000", text)
    return text + servers + f"    source {PROXY_SOURCE}\n"


class HAProxy:
    """`haproxy -f cfg -db` as a subprocess; its log goes to a file."""

    def __init__(self, tmp: Path, config: str, port: int) -> None:
        self.cfg = tmp / "haproxy.cfg"
        self.cfg.write_text(config)
        self.logfile = tmp / "haproxy.log"
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert HAPROXY is not None
        check = subprocess.run(
            [HAPROXY, "-c", "-f", str(self.cfg)], capture_output=True, text=True, timeout=30
        )
        assert check.returncode == 0, check.stderr
        with open(self.logfile, "ab") as log:
            self.proc = subprocess.Popen(
                [HAPROXY, "-f", str(self.cfg), "-db"], stdout=log, stderr=subprocess.STDOUT
            )
        wait_for(self._listening, "haproxy listening", 15)

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError("haproxy exited:\n" + self.logfile.read_text()[-2000:])
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def connected_here(c: CollectorProcess, device: str) -> bool:
    return f"connected device={device} " in c.log


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_agents_fail_over_through_haproxy(tmp_path: Path, backend: str) -> None:
    """Two collectors share one database: an SQLite file on this host, or PostgreSQL (the
    scale-out setup: stateless collectors, one database)."""
    if backend == "sqlite":
        _fail_over(tmp_path, tmp_path / "shared.db")
        return
    with throwaway_database() as url:
        _fail_over(tmp_path, url)


def _fail_over(tmp_path: Path, db: Path | str) -> None:
    names = [f"agent-{i}" for i in range(AGENTS)]
    tokens = add_devices(db, [*names, "streamer"])
    args = ("--proxy-protocol", "--proxy-protocol-from", f"{PROXY_SOURCE}/32")
    collectors = [CollectorProcess(db, *args, env=ENV) for _ in range(2)]
    port = free_port()
    agents = [Agent(tmp_path, n, tokens[n]) for n in names]
    expected: dict[tuple[str, str], int] = {}
    for a in agents:
        sensors = [f"{a.device}/s{j}" for j in range(SENSORS)]
        a.configure(port, counter_input(sensors, SAMPLES))
        expected.update({(a.device, s): SAMPLES for s in sensors})
    streamer = Streamer("streamer", tokens["streamer"], STREAMER_BATCHES, [port], pace_s=0.01)
    total = sum(expected.values()) + STREAMER_BATCHES * Streamer.SENSORS
    haproxy: HAProxy | None = None
    try:
        for c in collectors:
            c.start()
        haproxy = HAProxy(tmp_path, haproxy_config(port, collectors), port)
        haproxy.start()
        for a in agents:
            a.start()
        streamer.start()
        wait_for(lambda: committed_total(db) >= total // 4, "a quarter stored", 60)
        # The victim: the collector serving the most agents at that moment.
        victim = max(collectors, key=lambda c: sum(connected_here(c, n) for n in names))
        survivor = next(c for c in collectors if c is not victim)
        moved = [n for n in names if connected_here(victim, n)]
        assert moved, "no agent on either collector"
        before = committed_total(db)
        seen = {n: survivor.log.count(f"connected device={n} ") for n in moved}
        victim.kill()
        with streamer.lock:
            acked = streamer.acked_seq
        st = stored(db, "streamer")
        kept = {v for key in st.values for v in st.ints(key)}
        assert set(range(1, acked + 1)) <= kept, f"ACKed batches missing after the kill: {acked}"
        assert committed_total(db) >= before
        # Each moved agent's stream gets a session on the survivor (a stream's HELLO there).
        failover = wait_for(
            lambda: all(survivor.log.count(f"connected device={n} ") > seen[n] for n in moved),
            "agents on the survivor",
            60,
        )
        took = wait_for(lambda: committed_total(db) >= total, "every reading", 90)
        streamer.join(30)
        assert not streamer.is_alive()
        for a in agents:
            wait_for(lambda a=a: not a.spooled(), f"{a.device} spool drained", 30)  # type: ignore[misc]
            assert a.dropped_total() == 0
        for n in moved:
            assert connected_here(survivor, n), f"{n} did not come back through HAProxy"
        # The agents' own address (127.0.0.1), which only the PROXY header carries.
        for c in collectors:
            peers = re.findall(r"connected device=\S+ stream=\S+ peer=(\S+)", c.log)
            assert peers and all(p.startswith("127.0.0.1:") for p in peers), peers
            assert f"peer={PROXY_SOURCE}" not in c.log
    finally:
        streamer.stop_flag.set()
        for a in agents:
            a.stop()
        if haproxy is not None:
            haproxy.stop()
        for c in collectors:
            if c.proc is not None and c.proc.poll() is None:
                c.terminate()
    expected.update(
        {("streamer", f"stream/s{i}"): STREAMER_BATCHES for i in range(Streamer.SENSORS)}
    )
    assert integrity(db) == "ok"
    st = stored(db)
    assert_exactly_once(st, expected)
    report(
        f"haproxy failover ({'postgres' if isinstance(db, str) else 'sqlite'})",
        {"readings": st.total, "moved_agents": len(moved), "failover_s": failover, "drain_s": took},
    )
