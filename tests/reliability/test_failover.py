"""Agent failover without a balancer: `[collector] addresses` lists two real collector
processes sharing one SQLite file; one is SIGKILLed mid-stream and the agents carry on
through the other. Every reading taken is stored exactly once."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.collector.wireclient import CollectorProcess
from tests.reliability.harness import (
    ENV,
    Agent,
    add_devices,
    assert_exactly_once,
    committed_total,
    counter_input,
    integrity,
    report,
    stored,
    wait_for,
)

SENSORS = 20
SAMPLES = 400  # per sensor, one every 10 ms: ~4 s of streaming per agent


def closed_port() -> int:
    """A loopback port nobody listens on (connecting to it is refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def use_addresses(agent: Agent, ports: list[int]) -> None:
    listed = ", ".join(f'"127.0.0.1:{p}"' for p in ports)
    text = agent.config.read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("address = "))
    agent.config.write_text(text.replace(line, f"addresses = [{listed}]"))


def test_agents_fail_over_to_the_other_collector(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    names = ["agent-0", "agent-1"]
    tokens = add_devices(db, names)
    dead = closed_port()
    with CollectorProcess(db, env=ENV) as first, CollectorProcess(db, env=ENV) as second:
        p1, p2 = first.ingest[1], second.ingest[1]
        agents = [Agent(tmp_path, n, tokens[n]) for n in names]
        expected: dict[tuple[str, str], int] = {}
        for a, ports in zip(agents, ([p1, p2], [dead, p1, p2]), strict=True):
            sensors = [f"{a.device}/s{j}" for j in range(SENSORS)]
            a.configure(p1, counter_input(sensors, SAMPLES))
            use_addresses(a, ports)
            expected.update({(a.device, s): SAMPLES for s in sensors})
        total = sum(expected.values())
        try:
            for a in agents:
                a.start()
            wait_for(lambda: committed_total(db) >= total // 4, "a quarter stored", 60)
            for a in agents:
                assert f"connected collector=127.0.0.1:{p1} " in a.text()
            assert f"trying the next collector collector=127.0.0.1:{p1}" in agents[1].text()
            first.kill()
            failover = wait_for(
                lambda: all(f"connected collector=127.0.0.1:{p2} " in a.text() for a in agents),
                "both agents on the second collector",
                60,
            )
            took = wait_for(lambda: committed_total(db) >= total, "every reading", 90)
            for a in agents:
                wait_for(lambda a=a: not a.spooled(), f"{a.device} spool drained", 30)  # type: ignore[misc]
                assert f"connected collector=127.0.0.1:{p2} " in a.text(), a.text()[-2000:]
                assert a.dropped_total() == 0
            assert "connected device=agent-0" in second.log
        finally:
            for a in agents:
                a.stop()
    assert integrity(db) == "ok"
    st = stored(db)
    assert_exactly_once(st, expected)
    report("agent failover", {"readings": st.total, "failover_s": failover, "drain_s": took})
