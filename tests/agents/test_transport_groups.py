"""The agent's transport sends series groups (GBATCH) to a collector that announces them,
against a real `telemetry collector` subprocess: what it stores and what it rejects is the
same as the row form of the same readings sent by another device."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

from agents.config import AgentConfig
from agents.spool import SealedBatch
from agents.transport import Transport, _wire_batch
from schemas import wire
from tests.agents.fake_collector import until
from tests.collector.wireclient import CollectorProcess, WireClient
from tests.reliability.harness import stored

TS0 = time.time_ns() - 600 * 1_000_000_000


def readings() -> list[object]:
    """Several series, valid and invalid readings, interleaved as a device takes them."""
    out: list[object] = []
    for i in range(40):
        ts = TS0 + i * 1_000_000_000
        out.append(["air", "temperature", ts, 20.0 + i % 5, "C", {"site": "north"}])
        out.append(["hum", "humidity", ts, 150.0 if i == 7 else 50.0 + i % 3, "%", None])
        if i % 10 == 0:
            out.append(["truck", "gps", ts, {"lat": 48.1, "lon": 11.5 + i}, None, None])
    out.append(["door", "state", TS0, True, None, None])  # a series of one: a row
    out.append(["bad sensor", "gauge", TS0, 1.0, None, None])
    out.append(["hum", "humidity", TS0 + 1, "wet", "%", None])
    return out


class FrameTypes:
    """A loopback TCP proxy that notes the message type of every agent -> collector frame."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.types: list[int] = []
        self.server: asyncio.Server | None = None
        self.streams: list[asyncio.StreamWriter] = []
        self.done: list[asyncio.Event] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        done = asyncio.Event()
        self.done.append(done)
        self.streams.append(cw)
        try:
            ur, uw = await asyncio.open_connection(*self.upstream)
            self.streams.append(uw)

            async def up() -> None:
                while True:
                    head = await cr.readexactly(4)
                    body = await cr.readexactly(struct.unpack(">I", head)[0])
                    self.types.append(body[1])  # [type, ...]: a fixarray, then a fixint code
                    uw.write(head + body)
                    await uw.drain()

            async def down() -> None:
                while data := await ur.read(65536):
                    cw.write(data)
                    await cw.drain()
                cw.close()

            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                await asyncio.gather(up(), down())
        finally:
            done.set()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.streams:
            w.close()
        for done in self.done:
            await asyncio.wait_for(done.wait(), 10)
        for w in self.streams:
            with contextlib.suppress(ConnectionError):
                await w.wait_closed()
        await self.server.wait_closed()


@contextlib.asynccontextmanager
async def running(transport: Transport) -> AsyncIterator[None]:
    task = asyncio.create_task(transport.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def dead_letters(db: Path, device: str) -> Counter[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return Counter(
            conn.execute(
                "SELECT r.code, r.path, r.message, r.reading, r.raw FROM rejected r "
                "JOIN devices d ON d.id = r.device_id WHERE d.name = ?",
                (device,),
            ).fetchall()
        )
    finally:
        conn.close()


def test_grouped_and_row_forms_store_and_reject_the_same(tmp_path, spools):
    db = tmp_path / "c.db"
    sent = readings()
    with CollectorProcess(db) as daemon:
        grouped_token = daemon.add_device("grouped")
        rows_token = daemon.add_device("rows")
        # The row form, byte for byte: one BATCH.
        with WireClient(*daemon.ingest) as c:
            welcome = c.hello("rows", rows_token)
            assert isinstance(welcome, wire.Welcome) and welcome.minor >= wire.GROUPS_MINOR
            row_ack = c.batch(1, sent)
        assert isinstance(row_ack, wire.Ack)

        async def main() -> None:
            proxy = FrameTypes(daemon.ingest)
            cfg = AgentConfig(
                device_id="grouped",
                token=grouped_token,
                port=await proxy.start(),
                batch_max_readings=len(sent),
                batch_max_delay_s=0.02,
                spool_path=tmp_path / "spool.db",
                backoff_initial_s=0.05,
                backoff_max_s=0.2,
            )
            spool = spools(cfg.spool_path)
            assert spool.put(sent) == len(sent)
            tr = Transport(cfg, spool)
            async with running(tr):
                tr.notify()
                await until(lambda: len(spool) == 0, what="the batch acked", within=20)
            await proxy.stop()
            # HELLO, then one GBATCH (PINGs may come between).
            assert proxy.types[0] == wire.MessageType.HELLO
            batches = [t for t in proxy.types if t in (3, 10)]
            assert batches == [wire.MessageType.GBATCH]
            assert tr.stats.readings_acked == row_ack.accepted
            assert tr.stats.readings_rejected == len(row_ack.rejects) == 3

        asyncio.run(main())
    assert stored(db, "grouped").values == {
        ("grouped", sensor): v for (_, sensor), v in stored(db, "rows").values.items()
    }
    assert stored(db, "grouped").total == len(sent) - 3 + 4  # gps: 4 readings, 2 rows each
    assert dead_letters(db, "grouped") == dead_letters(db, "rows")
    assert len(dead_letters(db, "rows")) == 3


def test_the_batch_form_follows_welcome_minor():
    batch = SealedBatch(5, readings())
    for minor in (0, 1):
        event, order = _wire_batch(batch, minor)
        assert event == wire.Batch(5, batch.readings) and order is None
    event, order = _wire_batch(batch, wire.GROUPS_MINOR)
    assert event.groups and order is not None
    assert wire.expand_groups(event.readings, event.groups) == [batch.readings[i] for i in order]
    # Nothing to group: a BATCH even to a v1.2 collector.
    single = SealedBatch(6, [["door", "state", 1, True, None, None]])
    assert _wire_batch(single, wire.GROUPS_MINOR) == (wire.Batch(6, single.readings), None)
