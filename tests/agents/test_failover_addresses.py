"""`[collector] addresses`: parsing, and the transport's order of tries against a fake
collector over real TCP (the next address at once, the backoff once per full round)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from dataclasses import replace
from pathlib import Path

import pytest

from agents.config import AgentConfig, AgentConfigError, parse_config
from agents.transport import Transport
from tests.agents.fake_collector import FakeCollector, until


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse(collector: dict[str, object]) -> AgentConfig:
    return parse_config({"agent": {"device_id": "d", "token": "t"}, "collector": collector})


def test_addresses_parse_and_the_single_form_still_works() -> None:
    cfg = parse({"addresses": ["a.example:7878", "[2001:db8::1]:7000"]})
    assert cfg.addresses == (("a.example", 7878), ("2001:db8::1", 7000))
    assert (cfg.host, cfg.port) == ("a.example", 7878)
    one = parse({"address": "b.example:7"})
    assert one.addresses == (("b.example", 7),)
    assert parse({}).addresses == (("127.0.0.1", 7878),)
    assert AgentConfig(device_id="d", token="t", port=9).addresses == (("127.0.0.1", 9),)


@pytest.mark.parametrize(
    ("collector", "message"),
    [
        ({"address": "a:1", "addresses": ["b:2"]}, "either 'address' or 'addresses'"),
        ({"addresses": []}, "list of"),
        ({"addresses": "a:1"}, "list of"),
        ({"addresses": ["a:1", 2]}, "list of"),
        ({"addresses": ["a:1", "b"]}, 'must be "host:port"'),
        ({"addresses": ["a:1", "a:1"]}, "twice"),
    ],
)
def test_bad_addresses(collector: dict[str, object], message: str) -> None:
    with pytest.raises(AgentConfigError, match=message) as err:
        parse(collector)
    assert "[collector], key 'address" in str(err.value)


def _cfg(tmp_path: Path, ports: list[int], **kw: object) -> AgentConfig:
    base = AgentConfig(
        device_id="dev-1",
        token="secret",
        collectors=tuple(("127.0.0.1", p) for p in ports),
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
        batch_max_readings=3,
        batch_max_delay_s=0.02,
        spool_path=tmp_path / "spool.db",
        connect_timeout_s=2.0,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def test_dead_addresses_are_skipped_without_waiting_for_the_backoff(tmp_path, spools, caplog):
    async def main() -> int:
        fake = FakeCollector()
        port = await fake.start()
        dead = [closed_port(), closed_port()]
        # A backoff far longer than the test: reaching the third address must not wait.
        cfg = _cfg(tmp_path, [*dead, port], backoff_initial_s=30.0, backoff_max_s=30.0)
        spool = spools(cfg.spool_path)
        spool.put([["s", "temperature", 1_000_000, 20.0, "C", None]])
        tr = Transport(cfg, spool)
        t0 = time.monotonic()
        task = asyncio.create_task(tr.run())
        try:
            await until(lambda: len(spool) == 0, what="acked through the third address")
            assert time.monotonic() - t0 < 10
            assert tr.address == ("127.0.0.1", port) and fake.connections == 1
        finally:
            await _stop(task)
            await fake.stop()
        return port

    with caplog.at_level(logging.INFO, logger="agents.transport"):
        port = asyncio.run(main())
    tried = [r.getMessage() for r in caplog.records if "trying the next" in r.getMessage()]
    assert len(tried) == 2 and tried[-1].endswith(f"collector=127.0.0.1:{port}")
    assert not any("reconnecting in" in r.getMessage() for r in caplog.records)


def test_a_full_round_of_failures_backs_off_once_then_starts_over(tmp_path, spools, caplog):
    async def main() -> None:
        dead = [closed_port(), closed_port(), closed_port()]
        cfg = _cfg(tmp_path, dead, backoff_initial_s=0.1, backoff_max_s=0.1)
        tr = Transport(cfg, spools(cfg.spool_path))
        task = asyncio.create_task(tr.run())
        try:
            await until(
                lambda: sum("reconnecting in" in r.getMessage() for r in caplog.records) >= 2,
                what="two rounds",
            )
        finally:
            await _stop(task)

    with caplog.at_level(logging.INFO, logger="agents.transport"):
        asyncio.run(main())
    kinds = [
        "down" if "link down" in m else "next" if "trying the next" in m else "backoff"
        for m in (r.getMessage() for r in caplog.records)
        if "link down" in m or "trying the next" in m or "reconnecting in" in m
    ]
    one_round = ["down", "next", "down", "next", "down", "backoff"]
    assert kinds[:12] == one_round * 2, kinds


def test_a_lost_session_moves_on_to_the_next_collector(tmp_path, spools):
    async def main() -> None:
        a, b = FakeCollector(), FakeCollector()
        pa, pb = await a.start(), await b.start()
        cfg = _cfg(tmp_path, [pa, pb], backoff_initial_s=30.0, backoff_max_s=30.0)
        spool = spools(cfg.spool_path)
        spool.put([["s", "temperature", 1_000_000, 20.0, "C", None]])
        tr = Transport(cfg, spool)
        task = asyncio.create_task(tr.run())
        try:
            await until(lambda: len(spool) == 0 and a.connections == 1, what="acked by a")
            await a.stop()  # closes its connections: the session is lost
            spool.put([["s", "temperature", 2_000_000, 21.0, "C", None]])
            tr.notify()
            await until(lambda: len(spool) == 0, what="acked by b, with no 30 s backoff")
            assert b.connections == 1 and len(b.stored) == 1
        finally:
            await _stop(task)
            await b.stop()

    asyncio.run(main())
