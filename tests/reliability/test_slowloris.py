"""Thousands of idle and slowloris connections are closed at their deadlines.

The collector runs with short limits (handshake 1 s, heartbeat 0.5 s, idle 2 s). The test
opens many connections at once: most send nothing, some trickle a HELLO one byte at a time
(slowloris: never complete within the handshake deadline), some authenticate and then fall
silent (never answering PINGs). Every one must be closed by the collector no earlier than
its deadline and no later than the deadline + MARGIN_S, the authenticated ones with ERROR
idle_timeout; meanwhile a well-behaved client streams on its own connection without
interruption and loses nothing.
"""

from __future__ import annotations

import selectors
import socket
import time
from dataclasses import dataclass, field

import pytest

from schemas import errors, wire
from schemas.errors import RemoteProtocolError
from tests.collector.wireclient import CollectorProcess
from tests.reliability.harness import (
    ENV,
    Streamer,
    add_devices,
    assert_exactly_once,
    report,
    stored,
)

HANDSHAKE_S = 1.0
HEARTBEAT_MS = 500
IDLE_S = 2.0
# Scheduling slack for closing thousands of sockets on a loaded 2-core machine.
MARGIN_S = 4.0
EARLY_S = 0.05
TRICKLE_S = 0.2


@dataclass(frozen=True)
class LorisSize:
    idle: int
    slowloris: int
    authenticated: int


LORIS_SHORT = LorisSize(800, 100, 100)
LORIS_LONG = LorisSize(4_000, 500, 500)


@dataclass
class Conn:
    kind: str
    sock: socket.socket
    opened: float
    deadline_from: float
    to_send: bytes = b""
    proto: wire.Connection = field(default_factory=lambda: wire.Connection(wire.Role.AGENT))
    closed_at: float = 0.0
    events: list[object] = field(default_factory=list)


def _open(port: int, kind: str, hello: wire.Hello | None = None) -> Conn:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    now = time.monotonic()
    c = Conn(kind, s, now, now)
    if kind == "authenticated":
        assert hello is not None
        s.sendall(c.proto.send(hello))
        c.deadline_from = time.monotonic()
    elif kind == "slowloris":
        assert hello is not None
        c.to_send = wire.encode(hello)
    s.setblocking(False)
    return c


def run_loris(port: int, token: str, size: LorisSize) -> list[Conn]:
    # One stream per connection: sessions of one stream would replace each other.
    def hello(i: int) -> wire.Hello:
        return wire.Hello(device_id="loris", token=token, stream=f"loris-{i}")

    conns = [_open(port, "authenticated", hello(i)) for i in range(size.authenticated)]
    conns += [_open(port, "slowloris", hello(-i)) for i in range(1, size.slowloris + 1)]
    conns += [_open(port, "idle") for _ in range(size.idle)]
    sel = selectors.DefaultSelector()
    for c in conns:
        sel.register(c.sock, selectors.EVENT_READ, c)
    open_n = len(conns)
    deadline = time.monotonic() + IDLE_S + MARGIN_S + 30
    next_trickle = time.monotonic()
    while open_n and time.monotonic() < deadline:
        now = time.monotonic()
        if now >= next_trickle:
            next_trickle = now + TRICKLE_S
            for c in conns:
                if c.kind == "slowloris" and not c.closed_at and len(c.to_send) > 1:
                    try:
                        c.sock.send(c.to_send[:1])  # never the last byte: HELLO stays incomplete
                        c.to_send = c.to_send[1:]
                    except OSError:
                        pass
        for key, _ in sel.select(timeout=0.05):
            c = key.data
            try:
                data = c.sock.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                data = b""
            if data:
                c.proto.receive_data(data)
                continue
            c.closed_at = time.monotonic()
            sel.unregister(c.sock)
            c.sock.close()
            open_n -= 1
            c.proto.receive_data(b"")
            while True:
                try:
                    ev = c.proto.next_event()
                except RemoteProtocolError:
                    break
                if ev is wire.NEED_DATA or isinstance(ev, wire.ConnectionClosed):
                    break
                c.events.append(ev)
    sel.close()
    for c in conns:
        if not c.closed_at:
            c.sock.close()
    return conns


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(LORIS_SHORT, id="short"),
        pytest.param(LORIS_LONG, id="long", marks=[pytest.mark.longform, pytest.mark.timeout(600)]),
    ],
)
def test_idle_and_slowloris_connections_close_at_their_deadlines(tmp_path, size, many_fds, request):
    assert many_fds >= size.idle + size.slowloris + size.authenticated + 100
    db = tmp_path / "loris.db"
    tokens = add_devices(db, ["loris", "good"])
    limits = [
        "--handshake-timeout-s",
        str(HANDSHAKE_S),
        "--heartbeat-ms",
        str(HEARTBEAT_MS),
        "--idle-timeout-s",
        str(IDLE_S),
        # Every connection comes from 127.0.0.1: lift the per-address limit above them all.
        "--max-connections-per-ip",
        str(size.idle + size.slowloris + size.authenticated + 10),
    ]
    with CollectorProcess(db, *limits, env=ENV) as daemon:
        port = daemon.ingest[1]
        good = Streamer("good", tokens["good"], 1_000_000, [port], pace_s=0.01)
        good.start()
        conns = run_loris(port, tokens["loris"], size)
        good.stop_flag.set()
        good.join(30)
        assert daemon.proc is not None and daemon.proc.poll() is None
    assert all(c.closed_at for c in conns), "some connections were never closed"
    lasted: dict[str, list[float]] = {}
    for c in conns:
        limit = IDLE_S if c.kind == "authenticated" else HANDSHAKE_S
        held = c.closed_at - c.deadline_from
        lasted.setdefault(c.kind, []).append(held)
        assert limit - EARLY_S <= held <= limit + MARGIN_S, (c.kind, held)
        codes = [e.code for e in c.events if isinstance(e, wire.Error)]
        if c.kind == "authenticated":
            assert isinstance(c.events[0], wire.Welcome)
            assert codes == [errors.IDLE_TIMEOUT], c.events
        else:
            assert codes == [errors.HANDSHAKE_TIMEOUT], c.events
    assert good.reconnects == 0, good.last_error
    assert good.acked_seq > 0
    assert_exactly_once(stored(db, "good"), good.expected(good.acked_seq))
    figures: dict[str, float] = {"connections": len(conns), "good_batches": float(good.acked_seq)}
    for kind, times in lasted.items():
        figures[f"{kind}_closed_after_max_s"] = max(times)
    report(request.node.name, figures)
