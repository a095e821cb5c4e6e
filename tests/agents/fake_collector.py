"""A small collector for agent tests: real TCP on 127.0.0.1, `schemas.wire` on the collector
side, the real reading validator, and knobs for the faults the agent must survive.

Semantics follow the shared design: a BATCH with seq <= last_seq is a resend (ACK with
accepted=0, duplicate=<valid readings>); otherwise valid readings are "committed" (kept in
`stored`), invalid ones go to `rejected`, and last_seq advances, all before the ACK.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from schemas import errors
from schemas.errors import RemoteProtocolError
from schemas.readings import ReadingValidator
from schemas.wire import (
    NEED_DATA,
    Ack,
    Batch,
    Connection,
    ConnectionClosed,
    Error,
    Hello,
    Ping,
    Pong,
    Retry,
    Role,
    Welcome,
)

_VALIDATOR = ReadingValidator()


@dataclass
class FakeCollector:
    token: str = "secret"
    heartbeat_ms: int = 300
    retry_once: set[int] = field(default_factory=set)  # RETRY these seqs the first time
    lose_ack_once: set[int] = field(default_factory=set)  # commit, then drop the link
    silent: bool = False  # after WELCOME: read nothing, answer nothing (a dead link)
    last_seq: dict[str, int] = field(default_factory=dict)
    stored: list[list[object]] = field(default_factory=list)
    rejected: list[tuple[int, list[object]]] = field(default_factory=list)
    hellos: list[Hello] = field(default_factory=list)
    batches_seen: list[int] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.close()
        await self._server.wait_closed()
        self._server = None

    def keys(self) -> list[tuple[str, int]]:
        """(sensor, ts) of every stored reading, in arrival order."""
        return [(str(r[0]), int(r[2])) for r in self.stored]  # type: ignore[call-overload]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        conn = Connection(Role.COLLECTOR)
        device = ""
        try:
            while True:
                data = await reader.read(65536)
                conn.receive_data(data)
                while True:
                    try:
                        ev = conn.next_event()
                    except RemoteProtocolError:
                        return
                    if ev is NEED_DATA or isinstance(ev, ConnectionClosed):
                        break
                    if isinstance(ev, Hello):
                        if ev.token != self.token:
                            writer.write(conn.send(Error(errors.AUTH_FAILED, "bad token")))
                            await writer.drain()
                            return
                        self.hellos.append(ev)
                        device = ev.device_id
                        welcome = Welcome(
                            self.last_seq.get(device, 0), heartbeat_ms=self.heartbeat_ms
                        )
                        writer.write(conn.send(welcome))
                        if self.silent:
                            await asyncio.sleep(3600)
                    elif isinstance(ev, Batch):
                        if not await self._batch(conn, writer, device, ev):
                            return
                    elif isinstance(ev, Ping):
                        writer.write(conn.send(Pong(ev.nonce)))
                if isinstance(ev, ConnectionClosed) or not data:
                    return
                await writer.drain()
        except (ConnectionError, OSError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _batch(
        self, conn: Connection, writer: asyncio.StreamWriter, device: str, ev: Batch
    ) -> bool:
        self.batches_seen.append(ev.seq)
        result = _VALIDATOR.validate_batch(ev.readings)
        if ev.seq <= self.last_seq.get(device, 0):
            writer.write(conn.send(Ack(ev.seq, 0, len(result.valid), tuple(result.rejects))))
            return True
        if ev.seq in self.retry_once:
            self.retry_once.discard(ev.seq)
            writer.write(conn.send(Retry(ev.seq, "busy", 50)))
            return True
        for r in result.valid:
            self.stored.append(list(r))
        for rej in result.rejects:
            self.rejected.append((ev.seq, ev.readings[rej.index]))  # type: ignore[arg-type]
        self.last_seq[device] = ev.seq
        if ev.seq in self.lose_ack_once:
            self.lose_ack_once.discard(ev.seq)
            writer.transport.abort()
            return False
        writer.write(conn.send(Ack(ev.seq, len(result.valid), 0, tuple(result.rejects))))
        return True


@contextlib.contextmanager
def threaded(fake: FakeCollector) -> Iterator[FakeCollector]:
    """Run the fake on its own event loop in a thread (for agent subprocess tests)."""
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def main() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(fake.start())
        started.set()
        loop.run_forever()

    t = threading.Thread(target=main, daemon=True)
    t.start()
    assert started.wait(10)
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)
        loop.close()


async def until(pred: Callable[[], bool], within: float = 10.0, what: str = "condition") -> None:
    """Poll `pred` until true, failing after `within` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
