"""The runner (inputs -> spool -> transport) and the Python API against a fake collector."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from pathlib import Path

from agents.api import Agent
from agents.config import AgentConfig, InputConfig
from agents.runner import Runner
from agents.sources import SourceContext
from agents.spool import Spool
from tests.agents.fake_collector import FakeCollector, threaded, until

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "agent"


def _cfg(tmp_path: Path, port: int, *inputs: InputConfig, **kw: object) -> AgentConfig:
    cfg = AgentConfig(
        device_id="dev-r",
        token="secret",
        port=port,
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
        batch_max_readings=50,
        batch_max_delay_s=0.02,
        spool_path=tmp_path / "spool.db",
        inputs=inputs,
    )
    return replace(cfg, **kw)  # type: ignore[arg-type]


def _sim(i: int, name: str, count: int, **opts: object) -> InputConfig:
    return InputConfig(
        "simulated", i, name=name, kind="gauge", interval_s=0.01, options={"count": count, **opts}
    )


def test_inputs_flow_to_the_collector_and_a_failing_input_does_not_stop_the_others(tmp_path):
    inputs = (
        _sim(0, "a", 20),
        _sim(1, "b", 15, invalid_every=5),
        InputConfig("file", 0, name="gone", interval_s=0.01, options={"path": "/missing/value"}),
        InputConfig(
            "file",
            1,
            name="cpu/temp",
            kind="temperature",
            interval_s=0.01,
            options={"path": "/sys/class/thermal/thermal_zone0/temp", "scale": 0.001},
        ),
    )

    async def main() -> Runner:
        fake = FakeCollector()
        cfg = _cfg(tmp_path, await fake.start(), *inputs)
        runner = Runner(cfg, ctx=SourceContext(root=FIXTURES))
        task = asyncio.create_task(runner.run())

        def by_sensor(name: str) -> list[list[object]]:
            return [r for r in fake.stored if r[0] == name]

        await until(
            lambda: len(by_sensor("a")) == 20 and len(by_sensor("b")) == 12, what="all samples"
        )
        await until(lambda: len(by_sensor("cpu/temp")) >= 3, what="file readings")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert len(fake.rejected) == 3
        assert by_sensor("cpu/temp")[0][3] == 42.5
        assert len(set(fake.keys())) == len(fake.keys())
        await fake.stop()
        return runner

    runner = asyncio.run(main())
    stats = runner.input_stats
    assert stats["inputs.file[0]"].failing and stats["inputs.file[0]"].errors >= 3
    assert stats["inputs.simulated[0]"].readings == 20
    assert not stats["inputs.file[1]"].failing


def test_once_mode_sends_one_sample_per_input_and_returns(tmp_path):
    async def main() -> None:
        fake = FakeCollector()
        cfg = _cfg(tmp_path, await fake.start(), _sim(0, "a", 100), _sim(1, "b", 100))
        await asyncio.wait_for(Runner(cfg).run(once=True), 30)
        assert sorted(str(r[0]) for r in fake.stored) == ["a", "b"]
        await fake.stop()

    asyncio.run(main())


def test_block_policy_makes_inputs_wait_instead_of_dropping(tmp_path):
    async def main() -> None:
        fake = FakeCollector()
        port = await fake.start()
        await fake.stop()  # the collector is away: the spool fills up
        cfg = _cfg(tmp_path, port, _sim(0, "a", 30), spool_max_readings=10, spool_policy="block")
        runner = Runner(cfg)
        task = asyncio.create_task(runner.run())
        await until(lambda: runner.spool is not None and len(runner.spool) == 10, what="full")
        await asyncio.sleep(0.1)  # inputs keep ticking meanwhile, and must wait
        assert runner.input_stats["inputs.simulated[0]"].samples <= 11
        await fake.start(port)
        await until(lambda: len(fake.stored) == 30, what="all 30 after the wait")
        assert runner.spool is not None and runner.spool.stats().dropped_total == 0
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await fake.stop()

    asyncio.run(main())


def test_python_api_records_from_user_code(tmp_path):
    with threaded(FakeCollector()) as fake:
        agent = Agent.create(
            collector=f"127.0.0.1:{fake.port}",
            device_id="api-dev",
            token="secret",
            spool_path=tmp_path / "api.db",
            backoff_initial_s=0.05,
            batch_max_delay_s=0.02,
        )
        agent.record("pre/start", kind="gauge", value=1.0)  # spooled before start()
        with agent:
            for i in range(5):
                agent.record(
                    "greenhouse/air-temp",
                    kind="temperature",
                    value=21.5 + i,
                    unit="C",
                    tags={"bed": "3"},
                    ts_ns=1_000 + i,
                )
            assert agent.flush(timeout=20)
            assert agent.connected
        stored = list(fake.stored)
    assert [r[0] for r in stored].count("greenhouse/air-temp") == 5
    assert ["greenhouse/air-temp", "temperature", 1_000, 21.5, "C", {"bed": "3"}] in stored
    assert any(r[0] == "pre/start" for r in stored)
    assert fake.hellos[0].device_id == "api-dev"


def test_python_api_keeps_unsent_readings_on_disk(tmp_path):
    agent = Agent.create(
        collector="127.0.0.1:9", device_id="d", token="t", spool_path=tmp_path / "k.db"
    )
    agent.record("x", kind="gauge", value=1.0)
    assert agent.flush(timeout=0.05) is False
    agent.close()
    sp = Spool(tmp_path / "k.db", max_readings=10, policy="drop-oldest")
    assert len(sp) == 1
    sp.close()


def test_self_metrics_report_input_errors_and_spool_counters(tmp_path):
    gone = InputConfig("file", 0, name="gone", interval_s=0.01, options={"path": "/missing/v"})

    async def main() -> None:
        fake = FakeCollector()
        cfg = _cfg(tmp_path, await fake.start(), gone, metrics_interval_s=0.05)
        task = asyncio.create_task(Runner(cfg).run())

        def latest(sensor: str) -> object:
            vals = [r[3] for r in fake.stored if r[0] == sensor]
            return vals[-1] if vals else None

        await until(lambda: (latest("agent/input_errors") or 0) >= 2, what="input errors")  # type: ignore[operator]
        await until(lambda: latest("agent/connected") is True, what="connected state")
        assert not fake.rejected  # every self-metric validates
        tags = next(r[5] for r in fake.stored if r[0] == "agent/input_errors")
        assert tags == {"input": "inputs.file[0]"}
        assert {"agent/spool_pending", "agent/dropped", "agent/rejected", "agent/acked"} <= {
            str(r[0]) for r in fake.stored
        }
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await fake.stop()

    asyncio.run(main())
