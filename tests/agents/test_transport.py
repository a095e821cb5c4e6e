"""The transport against a fake collector over real TCP: resume, resend, RETRY, rejects,
lost ACKs, auth failure, dead links and collector restarts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

from agents.config import AgentConfig
from agents.transport import Transport
from tests.agents.fake_collector import FakeCollector, until


def _cfg(tmp_path: Path, port: int, **kw: object) -> AgentConfig:
    base = AgentConfig(
        device_id="dev-1",
        token="secret",
        port=port,
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
        batch_max_readings=3,
        batch_max_delay_s=0.02,
        spool_path=tmp_path / "spool.db",
        connect_timeout_s=2.0,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def _r(i: int, value: object = None) -> list[object]:
    return [
        f"s{i % 2}",
        "temperature",
        1_000_000 + i,
        20.0 + i if value is None else value,
        "C",
        None,
    ]


@contextlib.asynccontextmanager
async def _running(transport: Transport) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(transport.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_streams_batches_in_order_and_empties_the_spool(tmp_path, spools):
    async def main() -> None:
        fake = FakeCollector()
        cfg = _cfg(tmp_path, await fake.start())
        spool = spools(cfg.spool_path)
        spool.put([_r(i) for i in range(7)])
        tr = Transport(cfg, spool)
        async with _running(tr):
            await until(lambda: len(fake.stored) == 7, what="7 readings")
            spool.put([_r(i) for i in range(7, 9)])
            tr.notify()
            await until(lambda: len(fake.stored) == 9 and len(spool) == 0, what="all acked")
        assert fake.keys() == [(f"s{i % 2}", 1_000_000 + i) for i in range(9)]
        assert fake.batches_seen == [1, 2, 3, 4]
        assert fake.hellos[0].device_id == "dev-1" and fake.hellos[0].agent == "telemetry-agent"
        assert tr.stats.readings_acked == 9 and tr.connected
        await fake.stop()
        spool.close()

    asyncio.run(main())


def test_retry_resends_the_same_batch_once(tmp_path, spools):
    async def main() -> None:
        fake = FakeCollector(retry_once={1})
        cfg = _cfg(tmp_path, await fake.start())
        spool = spools(cfg.spool_path)
        spool.put([_r(i) for i in range(3)])
        tr = Transport(cfg, spool)
        async with _running(tr):
            await until(lambda: len(spool) == 0, what="acked")
        assert fake.batches_seen == [1, 1]
        assert len(fake.stored) == 3 and tr.stats.retries == 1
        await fake.stop()

    asyncio.run(main())


def test_rejected_readings_are_counted_and_not_resent(tmp_path, spools, caplog):
    async def main() -> None:
        fake = FakeCollector()
        cfg = _cfg(tmp_path, await fake.start())
        spool = spools(cfg.spool_path)
        spool.put([_r(0), _r(1, -500.0), _r(2)])  # -500 C is below absolute zero
        tr = Transport(cfg, spool)
        async with _running(tr):
            await until(lambda: len(spool) == 0, what="acked")
            await asyncio.sleep(0.1)  # time in which a wrong resend would show up
        assert fake.batches_seen == [1]
        assert [r[3] for _, r in fake.rejected] == [-500.0]
        assert len(fake.stored) == 2
        assert tr.stats.readings_rejected == 1 and spool.stats().rejected_total == 1
        await fake.stop()

    with caplog.at_level(logging.WARNING, logger="agents.transport"):
        asyncio.run(main())
    assert "rejected readings, not resending seq=1 rejected=1" in caplog.text


def test_lost_ack_is_resolved_by_welcome_last_seq_without_duplicates(tmp_path, spools):
    async def main() -> None:
        fake = FakeCollector(lose_ack_once={2})
        cfg = _cfg(tmp_path, await fake.start())
        spool = spools(cfg.spool_path)
        spool.put([_r(i) for i in range(9)])
        tr = Transport(cfg, spool)
        async with _running(tr):
            await until(lambda: len(spool) == 0, what="acked")
        assert fake.connections == 2
        assert fake.batches_seen == [1, 2, 3]  # seq 2 was committed: not sent again
        assert sorted(fake.keys()) == sorted((f"s{i % 2}", 1_000_000 + i) for i in range(9))
        await fake.stop()

    asyncio.run(main())


def test_unacked_batches_survive_an_agent_restart_and_are_resent_first(tmp_path, spools):
    async def main() -> None:
        fake = FakeCollector()
        cfg = _cfg(tmp_path, await fake.start())
        spool = spools(cfg.spool_path)
        spool.put([_r(i) for i in range(5)])
        sealed = spool.seal(3)  # sealed and "sent" before a crash, never acked
        assert sealed is not None
        spool.close()
        spool = spools(cfg.spool_path)
        tr = Transport(cfg, spool)
        async with _running(tr):
            await until(lambda: len(spool) == 0, what="acked")
        assert fake.batches_seen == [1, 2]
        assert [k[1] for k in fake.keys()] == [1_000_000 + i for i in range(5)]
        assert tr.stats.resends == 1
        await fake.stop()

    asyncio.run(main())


def test_a_fresh_spool_behind_the_collector_renumbers_instead_of_losing_data(tmp_path, spools):
    async def main() -> None:
        fake = FakeCollector(last_seq={"dev-1": 40})
        cfg = _cfg(tmp_path, await fake.start())
        spool = spools(cfg.spool_path)
        spool.put([_r(i) for i in range(4)])
        spool.seal(3)
        tr = Transport(cfg, spool)
        async with _running(tr):
            await until(lambda: len(spool) == 0, what="acked")
        assert fake.batches_seen == [41, 42] and len(fake.stored) == 4
        await fake.stop()

    asyncio.run(main())


def test_dropped_count_goes_in_the_next_hello_once(tmp_path, spools):
    async def main() -> None:
        fake = FakeCollector(lose_ack_once={1})
        cfg = _cfg(tmp_path, await fake.start())
        spool = spools(cfg.spool_path, max_readings=4)
        spool.put([_r(i) for i in range(10)])  # 6 dropped
        tr = Transport(cfg, spool)
        async with _running(tr):
            await until(lambda: len(spool) == 0 and len(fake.hellos) == 2, what="reconnect")
        assert [h.dropped for h in fake.hellos] == [6, 0]
        assert len(fake.stored) == 4 and spool.stats().dropped_total == 6
        await fake.stop()

    asyncio.run(main())


def test_auth_failure_is_logged_clearly_and_backed_off(tmp_path, spools, caplog):
    async def main() -> Transport:
        fake = FakeCollector(token="other")
        cfg = _cfg(tmp_path, await fake.start())
        spool = spools(cfg.spool_path)
        spool.put([_r(0)])
        tr = Transport(cfg, spool)
        async with _running(tr):
            await until(lambda: tr.stats.auth_failures >= 2, what="two auth failures")
        assert not fake.stored and len(spool) == 1
        await fake.stop()
        return tr

    with caplog.at_level(logging.ERROR, logger="agents.transport"):
        asyncio.run(main())
    assert "collector refused this device, check device_id and token device_id=dev-1" in caplog.text
    assert "auth_failed" in caplog.text


def test_a_silent_collector_is_detected_as_a_dead_link(tmp_path, spools):
    async def main() -> None:
        fake = FakeCollector(silent=True, heartbeat_ms=100)
        cfg = _cfg(tmp_path, await fake.start())
        spool = spools(cfg.spool_path)
        tr = Transport(cfg, spool)
        async with _running(tr):
            await until(lambda: tr.stats.disconnects >= 1, within=10, what="dead link")
            await until(lambda: fake.connections >= 2, what="reconnect")
        assert "dead link" in tr.stats.last_error or "no data" in tr.stats.last_error
        await fake.stop()

    asyncio.run(main())


def test_collector_restart_delivers_everything_exactly_once(tmp_path, spools):
    async def main() -> None:
        fake = FakeCollector(heartbeat_ms=200)
        port = await fake.start()
        cfg = _cfg(tmp_path, port)
        spool = spools(cfg.spool_path)
        tr = Transport(cfg, spool)
        async with _running(tr):
            spool.put([_r(i) for i in range(4)])
            tr.notify()
            await until(lambda: len(fake.stored) == 4, what="first readings")
            await fake.stop()
            spool.put([_r(i) for i in range(4, 10)])  # taken while the collector is away
            tr.notify()
            await until(lambda: not tr.connected, what="link down")
            await fake.start(port)
            await until(lambda: len(spool) == 0, what="drained after restart")
        assert sorted(fake.keys()) == sorted((f"s{i % 2}", 1_000_000 + i) for i in range(10))
        assert len(set(fake.keys())) == 10
        await fake.stop()

    asyncio.run(main())


def test_backoff_is_jittered_exponential_and_capped(tmp_path, spools):
    cfg = _cfg(tmp_path, 1, backoff_initial_s=0.5, backoff_max_s=30.0)
    tr = Transport(cfg, spools(cfg.spool_path), rng=random.Random(1))
    delays = []
    for attempt in range(12):
        tr._attempt = attempt
        delays.append(tr.backoff_s())
    for attempt, d in enumerate(delays):
        base = min(30.0, 0.5 * 2**attempt)
        assert base / 2 <= d <= base
    assert max(delays) <= 30.0 and delays[-1] >= 15.0


def test_connection_refused_keeps_retrying(tmp_path, spools):
    async def main() -> None:
        fake = FakeCollector()
        port = await fake.start()
        await fake.stop()  # nothing listens on this port now
        cfg = _cfg(tmp_path, port)
        tr = Transport(cfg, spools(cfg.spool_path))
        async with _running(tr):
            await until(lambda: tr._attempt >= 3, what="several attempts")
        assert "Connection" in tr.stats.last_error or "connect" in tr.stats.last_error.lower()

    asyncio.run(main())


def test_tls_refuses_a_collector_its_ca_or_server_name_does_not_vouch_for(tmp_path, spools):
    from agents.config import TlsConfig
    from collector import certs
    from collector.tls import server_context

    good, other = tmp_path / "good", tmp_path / "other"
    for d in (good, other):
        certs.create_ca(d)
        certs.issue(d, "collector", server=True, hosts=("127.0.0.1",))

    async def main() -> None:
        accepted = 0

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            nonlocal accepted
            accepted += 1  # only reached when the TLS handshake succeeded
            w.close()

        sctx = server_context(other / "collector.pem", other / "collector.key")
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=sctx)
        port = server.sockets[0].getsockname()[1]
        cases = [
            (TlsConfig(enabled=True, ca_file=good / "ca.pem"), "127.0.0.1"),
            (
                TlsConfig(enabled=True, ca_file=other / "ca.pem", server_name="wrong.example"),
                "wrong.example",
            ),
        ]
        for i, (tls, name) in enumerate(cases):
            cfg = _cfg(tmp_path, port, tls=tls, spool_path=tmp_path / f"spool{i}.db")
            tr = Transport(cfg, spools(cfg.spool_path))
            stats = tr.stats
            async with _running(tr):
                await until(lambda: stats.last_error != "", what="a refused handshake")  # noqa: B023
            assert "certificate was refused" in tr.stats.last_error, tr.stats.last_error
            assert f"checked name: {name}" in tr.stats.last_error
            assert not tr.connected and tr.stats.connects == 0
        assert accepted == 0
        server.close()
        await server.wait_closed()

    asyncio.run(main())
