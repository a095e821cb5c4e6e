"""A TCP fault proxy for loopback tests: sits between agents and the collector and misbehaves.

Runs its own asyncio loop in a background thread so a test can drive real subprocesses while
the proxy forwards (and breaks) their traffic. Every fault is a switchable mode:

    pass        forward untouched
    delay       hold each chunk `delay_s` before forwarding
    fragment    forward one byte at a time (every frame arrives in 1-byte pieces)
    cut         close both sides after `cut_after` more upstream bytes (mid-frame)
    reset       abort connections with RST (SO_LINGER 0) as soon as data flows
    blackhole   accept and read but forward nothing in either direction (a silent dead link)

Only ever listens on and connects to loopback addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["pass", "delay", "fragment", "cut", "reset", "blackhole"]


@dataclass
class ProxyStats:
    connections: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    cuts: int = 0
    resets: int = 0


@dataclass
class FaultProxy:
    upstream_host: str
    upstream_port: int
    mode: Mode = "pass"
    delay_s: float = 0.05
    cut_after: int = 1000
    stats: ProxyStats = field(default_factory=ProxyStats)

    def __post_init__(self) -> None:
        assert self.upstream_host in ("127.0.0.1", "::1", "localhost")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._cut_budget = 0
        self.port = 0

    # -- control (called from the test thread)

    def start(self) -> FaultProxy:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        self.port = fut.result(10)
        return self

    def set_mode(self, mode: Mode, **kw: float) -> None:
        def apply() -> None:
            self.mode = mode
            for k, v in kw.items():
                setattr(self, k, v)
            self._cut_budget = int(self.cut_after)

        self._loop.call_soon_threadsafe(apply)

    def drop_all(self) -> None:
        """Close every proxied connection now (both sides see EOF)."""
        asyncio.run_coroutine_threadsafe(self._drop_all(), self._loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    # -- loop side

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._drop_all()

    async def _drop_all(self) -> None:
        for w in list(self._writers):
            w.close()
        self._writers.clear()

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        try:
            ur, uw = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        except OSError:
            cw.close()
            return
        self._writers.update((cw, uw))
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._pump(cr, uw, up=True, peers=(cw, uw)))
                tg.create_task(self._pump(ur, cw, up=False, peers=(cw, uw)))
        except* (ConnectionError, OSError):
            pass
        finally:
            for w in (cw, uw):
                self._writers.discard(w)
                w.close()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        up: bool,
        peers: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            mode = self.mode
            if mode == "blackhole":
                continue
            if mode == "reset":
                self.stats.resets += 1
                for w in peers:
                    sock = w.get_extra_info("socket")
                    if sock is not None:
                        with contextlib.suppress(OSError):
                            sock.setsockopt(
                                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                            )
                    w.transport.abort()
                return
            if mode == "cut" and up:
                if len(data) >= self._cut_budget:
                    writer.write(data[: self._cut_budget])
                    await writer.drain()
                    self.stats.cuts += 1
                    self._cut_budget = int(self.cut_after)
                    for w in peers:
                        w.close()
                    return
                self._cut_budget -= len(data)
            if mode == "delay":
                await asyncio.sleep(self.delay_s)
            if mode == "fragment":
                for i in range(len(data)):
                    writer.write(data[i : i + 1])
                    await writer.drain()
            else:
                writer.write(data)
                await writer.drain()
            if up:
                self.stats.bytes_up += len(data)
            else:
                self.stats.bytes_down += len(data)
