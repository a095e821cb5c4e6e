"""Crashes: the collector SIGKILLed under load, and agents SIGKILLed while the collector is down.

Scenario 1: several real agents (`python -m agents`) stream counted readings while the
collector is SIGKILLed at random points of the stream and restarted on the same port and
database. A raw `WireClient` streamer runs beside them and records every ACK it gets, so
"ACKed means committed" is checked right after each kill, before anything is resent. After
every restart `PRAGMA integrity_check` must say ok; at the end every reading the agents took
is stored exactly once.

Scenario 2: the collector goes down, then every agent is SIGKILLed mid-stream and restarted
(with new sensors, as a rebooted device would take new readings) several times; after the
collector returns every reading the agents took is stored exactly once, minus exactly the
spool drops they reported.
"""

from __future__ import annotations

import random
import signal
import time
from dataclasses import dataclass
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
    ro,
    stored,
    wait_for,
)


@dataclass(frozen=True)
class KillSize:
    agents: int
    sensors: int  # per agent
    samples: int  # per sensor
    kills: int
    streamer_batches: int
    timeout_s: float

    @property
    def total(self) -> int:
        return self.agents * self.sensors * self.samples


KILL_SHORT = KillSize(4, 50, 500, 5, 400, 100)  # 100k agent readings
KILL_LONG = KillSize(4, 100, 2_500, 20, 4_000, 1_500)  # 1M agent readings


def _stored_stream_seqs(db: Path, device: str) -> set[int]:
    st = stored(db)
    return {v for key in st.values if key[0] == device for v in st.ints(key)}


def run_kill_scenario(tmp_path: Path, size: KillSize, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    db = tmp_path / "kill.db"
    names = [f"agent-{i}" for i in range(size.agents)]
    tokens = add_devices(db, [*names, "streamer"])
    daemon = CollectorProcess(db, env=ENV)
    daemon.start()
    port = daemon.ingest[1]
    daemon.args = ["--listen", f"127.0.0.1:{port}"]  # restarts come back on the same port
    agents = [Agent(tmp_path, n, tokens[n]) for n in names]
    expected: dict[tuple[str, str], int] = {}
    for a in agents:
        sensors = [f"{a.device}/s{j}" for j in range(size.sensors)]
        a.configure(port, counter_input(sensors, size.samples))
        expected.update({(a.device, s): size.samples for s in sensors})
    port_box = [port]
    streamer = Streamer("streamer", tokens["streamer"], size.streamer_batches, port_box)
    figures: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        for a in agents:
            a.start()
        streamer.start()
        points = sorted(rng.uniform(0.03, 0.9) * size.total for _ in range(size.kills))
        restart_s: list[float] = []
        for point in points:
            wait_for(lambda p=point: committed_total(db) >= p, "progress", size.timeout_s)  # type: ignore[misc]
            before = committed_total(db)
            daemon.kill()
            with streamer.lock:
                acked = streamer.acked_seq
            after_kill = committed_total(db)
            assert after_kill >= before, "a committed reading vanished with the process"
            seqs = _stored_stream_seqs(db, "streamer")
            assert set(range(1, acked + 1)) <= seqs, f"ACKed batches missing after a kill: {acked}"
            t = time.monotonic()
            daemon.start()
            restart_s.append(time.monotonic() - t)
            assert integrity(db) == "ok"
        wait_for(
            lambda: committed_total(db) >= size.total + size.streamer_batches * Streamer.SENSORS,
            "every reading",
            size.timeout_s,
        )
        streamer.join(30)
        figures["seconds"] = time.monotonic() - t0
        figures["restart_s_max"] = max(restart_s)
        figures["streamer_reconnects"] = streamer.reconnects
        for a in agents:
            wait_for(lambda a=a: not a.spooled(), f"{a.device} spool drained", 30)  # type: ignore[misc]
            assert a.dropped_total() == 0
    finally:
        streamer.stop_flag.set()
        for a in agents:
            a.stop()
        daemon.terminate()
    expected.update(
        {("streamer", f"stream/s{i}"): size.streamer_batches for i in range(Streamer.SENSORS)}
    )
    assert integrity(db) == "ok"
    st = stored(db)
    assert_exactly_once(st, expected)
    figures["readings"] = st.total
    figures["kills"] = size.kills
    return figures


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(KILL_SHORT, id="short"),
        pytest.param(KILL_LONG, id="long", marks=[pytest.mark.longform, pytest.mark.timeout(1800)]),
    ],
)
def test_collector_sigkilled_under_load_loses_and_duplicates_nothing(tmp_path, size, request):
    figures = run_kill_scenario(tmp_path, size, seed=6)
    report(request.node.name, figures)


# ----------------------------------------------------------------------------- scenario 2


@dataclass(frozen=True)
class DownSize:
    agents: int
    sensors: int
    samples: int  # per sensor per phase
    rounds: int  # kills per agent while the collector is down
    spool_max: int


DOWN_SHORT = DownSize(2, 20, 100, 2, 2_000_000)
DOWN_SHORT_DROPS = DownSize(2, 20, 100, 2, 1_500)
DOWN_LONG = DownSize(3, 50, 400, 6, 2_000_000)


def run_down_scenario(tmp_path: Path, size: DownSize, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    db = tmp_path / "down.db"
    names = [f"agent-{i}" for i in range(size.agents)]
    tokens = add_devices(db, names)
    daemon = CollectorProcess(db, env=ENV)
    daemon.start()
    port = daemon.ingest[1]
    daemon.args = ["--listen", f"127.0.0.1:{port}"]
    agents = [Agent(tmp_path, n, tokens[n]) for n in names]

    def sensors(a: Agent, phase: int) -> list[str]:
        return [f"{a.device}/p{phase}/s{j}" for j in range(size.sensors)]

    # taken[(device, sensor)] = the highest counter value the agent durably took.
    taken: dict[tuple[str, str], int] = {}
    kills = 0
    # Inputs finished (log lines) when each agent started its phase: an agent whose phase's
    # input has finished samples no more, so waiting for its spool to grow would never end.
    finished_before: dict[str, int] = {}
    try:
        for a in agents:
            a.configure(port, counter_input(sensors(a, 0), size.samples), spool_max=size.spool_max)
            finished_before[a.device] = a.finished_inputs()
            a.start()
        wait_for(lambda: committed_total(db) >= size.sensors * size.agents, "first readings")
        daemon.kill()
        before_down = stored(db)
        for phase in range(size.rounds):
            for a in agents:
                threshold = rng.randrange(1, size.sensors * size.samples // 2)
                base = sum(len(v) for v in a.spooled().values())
                wait_for(
                    lambda a=a, b=base, t=threshold: (
                        sum(len(v) for v in a.spooled().values())  # type: ignore[misc]
                        >= min(b + t, size.spool_max)
                        or a.finished_inputs() > finished_before[a.device]
                    ),
                    f"{a.device} sampling",
                    60,
                )
                a.stop(signal.SIGKILL)
                kills += 1
                spool = a.spooled()
                for s in sensors(a, phase):
                    top = max(
                        [
                            0,
                            *spool.get(s, []),
                            *before_down.ints((a.device, s)),
                        ]
                    )
                    taken[(a.device, s)] = top
                a.configure(
                    port,
                    counter_input(sensors(a, phase + 1), size.samples),
                    spool_max=size.spool_max,
                )
                finished_before[a.device] = a.finished_inputs()
                a.start()
        last = size.rounds
        for a in agents:
            wait_for(lambda a=a: a.finished_inputs() >= 1, f"{a.device} last phase", 120)  # type: ignore[misc]
            taken.update({(a.device, s): size.samples for s in sensors(a, last)})
        daemon.start()
        assert integrity(db) == "ok"
        for a in agents:
            wait_for(lambda a=a: not a.spooled(), f"{a.device} spool drained", 120)  # type: ignore[misc]
        dropped = {a.device: a.dropped_total() for a in agents}
        wait_for(lambda: _reported_drops(db) == dropped, "drops reported", 30)
        reported = _reported_drops(db)
    finally:
        for a in agents:
            a.stop()
        daemon.terminate()
    st = stored(db)
    taken = {k: n for k, n in taken.items() if n > 0}
    for key, vals in st.values.items():
        assert len(vals) == len(set(vals)), f"{key}: duplicates stored"
        assert set(vals) <= set(range(1, taken.get(key, 0) + 1)), f"{key}: not taken {vals[:5]}"
    assert set(taken) >= set(st.values)
    for dev, n_dropped in reported.items():
        took = sum(n for (d, _), n in taken.items() if d == dev)
        got = sum(len(v) for (d, _), v in st.values.items() if d == dev)
        assert got == took - n_dropped, (dev, took, got, n_dropped)
    if size.spool_max >= 1_000_000:
        assert sum(reported.values()) == 0
        assert_exactly_once(st, taken)
    return {
        "readings_taken": sum(taken.values()),
        "stored": st.total,
        "dropped_reported": sum(reported.values()),
        "agent_kills": kills,
    }


def _reported_drops(db: Path) -> dict[str, int]:
    conn = ro(db)
    try:
        return {str(n): int(d) for n, d in conn.execute("SELECT name, spool_dropped FROM devices")}
    finally:
        conn.close()


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(DOWN_SHORT, id="short"),
        pytest.param(DOWN_SHORT_DROPS, id="short-spool-drops"),
        pytest.param(DOWN_LONG, id="long", marks=[pytest.mark.longform, pytest.mark.timeout(900)]),
    ],
)
def test_agents_killed_while_collector_down_every_taken_reading_stored_once(
    tmp_path, size, request
):
    figures = run_down_scenario(tmp_path, size, seed=7)
    report(request.node.name, figures)
