"""Network faults: real agents talk to the collector through `FaultProxy`.

The proxy cycles through delay, 1-byte fragments, a cut in the middle of a frame, TCP resets
and a silent dead link (blackhole) while two agents stream counted readings. At the end every
reading is stored exactly once. After each breaking fault is cleared, data must flow again
within the protocol's bounds:

* cut / reset: the agent is sleeping at most `backoff_max` before its next attempt, so new
  readings are committed within backoff_max + MARGIN_S.
* blackhole: the agent must notice the dead link by itself (no FIN, no RST): its heartbeat
  read deadline is 2 x heartbeat + 1 s (agents.transport), the ACK deadline 3 x heartbeat
  + 1 s; a connection whose HELLO was swallowed ends at the collector's handshake deadline.
  Detection is measured while the link is dead (a new connection reaches the proxy), and
  recovery after clearing is bounded by the longest of those deadlines + backoff_max + MARGIN_S.

MARGIN_S absorbs process scheduling on a loaded 2-core machine; it is a protocol bound, not
a performance figure.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.collector.wireclient import CollectorProcess
from tests.reliability.faultproxy import FaultProxy
from tests.reliability.harness import (
    ENV,
    Agent,
    add_devices,
    assert_exactly_once,
    counter_input,
    integrity,
    report,
    ro,
    stored,
    wait_for,
)

BACKOFF_MAX_S = 0.5
HEARTBEAT_S = 0.3
HANDSHAKE_TIMEOUT_S = 2.0
MARGIN_S = 3.0
SAMPLE_S = 0.02
DEAD_LINK_S = max(2 * HEARTBEAT_S + 1.0, 3 * HEARTBEAT_S + 1.0)


@dataclass(frozen=True)
class ProxySize:
    agents: int
    sensors: int
    samples: int
    cycles: int


# Sampling must outlast the fault cycles (each ~4-8 s), so every phase sees data flowing.
PROXY_SHORT = ProxySize(2, 10, 900, 1)
PROXY_LONG = ProxySize(2, 10, 3_000, 6)


def by_device(db: Path) -> dict[str, int]:
    conn = ro(db)
    try:
        return {
            str(n): int(c)
            for n, c in conn.execute(
                "SELECT d.name, coalesce(sum(s.count), 0) FROM devices d "
                "LEFT JOIN series s ON s.device_id = d.id GROUP BY d.name"
            )
        }
    finally:
        conn.close()


def flowing_again(db: Path, names: list[str], within: float) -> float:
    """Seconds until every agent committed new readings; AssertionError past `within`."""
    start = by_device(db)
    return wait_for(
        lambda: all(by_device(db)[n] > start[n] for n in names), "data flowing again", within
    )


def run_proxy_scenario(tmp_path: Path, size: ProxySize, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    db = tmp_path / "proxy.db"
    names = [f"agent-{i}" for i in range(size.agents)]
    tokens = add_devices(db, names)
    figures: dict[str, float] = {}
    with CollectorProcess(db, "--handshake-timeout-s", str(HANDSHAKE_TIMEOUT_S), env=ENV) as daemon:
        proxy = FaultProxy(*daemon.ingest).start()
        agents = [Agent(tmp_path, n, tokens[n]) for n in names]
        expected: dict[tuple[str, str], int] = {}
        try:
            for a in agents:
                sensors = [f"{a.device}/s{j}" for j in range(size.sensors)]
                a.configure(
                    proxy.port,
                    counter_input(sensors, size.samples, interval=f"{SAMPLE_S * 1000:g}ms"),
                    backoff_max_ms=int(BACKOFF_MAX_S * 1000),
                    heartbeat_ms=int(HEARTBEAT_S * 1000),
                    batch=50,
                )
                expected.update({(a.device, s): size.samples for s in sensors})
                a.start()
            flowing_again(db, names, 30)
            recover: dict[str, list[float]] = {"cut": [], "reset": [], "blackhole": []}
            detect: list[float] = []
            for _ in range(size.cycles):
                for mode in ("delay", "fragment"):
                    proxy.set_mode(mode, delay_s=0.05)
                    flowing_again(db, names, 30)  # slow but still flowing, nothing breaks
                proxy.set_mode("cut", cut_after=rng.randrange(50, 3000))
                cuts = proxy.stats.cuts
                wait_for(lambda c=cuts: proxy.stats.cuts >= c + 2, "two cuts", 30)  # type: ignore[misc]
                proxy.set_mode("pass")
                recover["cut"].append(flowing_again(db, names, BACKOFF_MAX_S + MARGIN_S))
                proxy.set_mode("reset")
                resets = proxy.stats.resets
                wait_for(lambda r=resets: proxy.stats.resets >= r + 3, "three resets", 30)  # type: ignore[misc]
                proxy.set_mode("pass")
                recover["reset"].append(flowing_again(db, names, BACKOFF_MAX_S + MARGIN_S))
                conns = proxy.stats.connections
                proxy.set_mode("blackhole")
                detect.append(
                    wait_for(
                        lambda c=conns: proxy.stats.connections >= c + len(names),  # type: ignore[misc]
                        "every agent to notice the dead link and reconnect",
                        DEAD_LINK_S + BACKOFF_MAX_S + MARGIN_S,
                    )
                )
                proxy.set_mode("pass")
                bound = max(DEAD_LINK_S, HANDSHAKE_TIMEOUT_S) + BACKOFF_MAX_S + MARGIN_S
                recover["blackhole"].append(flowing_again(db, names, bound))
            for a in agents:
                wait_for(
                    lambda a=a: a.finished_inputs() >= 1,  # type: ignore[misc]
                    f"{a.device} done",
                    size.samples * SAMPLE_S + 60,
                )
                wait_for(lambda a=a: not a.spooled(), f"{a.device} spool drained", 60)  # type: ignore[misc]
                assert a.dropped_total() == 0
        finally:
            for a in agents:
                a.stop()
            proxy.stop()
        figures.update({f"recover_{k}_max_s": max(v) for k, v in recover.items()})
        figures["detect_dead_link_max_s"] = max(detect)
        figures["proxied_connections"] = proxy.stats.connections
        figures["cuts"] = proxy.stats.cuts
        figures["resets"] = proxy.stats.resets
    assert integrity(db) == "ok"
    st = stored(db)
    assert_exactly_once(st, expected)
    figures["readings"] = st.total
    return figures


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(PROXY_SHORT, id="short"),
        pytest.param(PROXY_LONG, id="long", marks=[pytest.mark.longform, pytest.mark.timeout(900)]),
    ],
)
def test_network_faults_lose_nothing_and_reconnect_within_backoff_bounds(tmp_path, size, request):
    report(request.node.name, run_proxy_scenario(tmp_path, size, seed=3))
