"""Property tests: whatever a peer sends, `schemas.wire` raises only RemoteProtocolError."""

from __future__ import annotations

import itertools
import struct

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from schemas import errors, wire
from schemas.errors import RemoteProtocolError
from schemas.wire import (
    NEED_DATA,
    Batch,
    Bye,
    Connection,
    ConnectionClosed,
    Hello,
    Ping,
    Role,
    State,
    Welcome,
)

EVENT_TYPES = (
    wire.Hello,
    wire.Welcome,
    wire.Batch,
    wire.Ack,
    wire.Retry,
    wire.Ping,
    wire.Pong,
    wire.Error,
    wire.Bye,
)


def ready(role: Role) -> Connection:
    agent, collector = Connection(Role.AGENT), Connection(Role.COLLECTOR)
    collector.receive_data(agent.send(Hello("d", "t")))
    collector.next_event()
    agent.receive_data(collector.send(Welcome(0)))
    agent.next_event()
    return agent if role is Role.AGENT else collector


def pump(conn: Connection, chunks: list[bytes], *, eof: bool = True) -> list[object]:
    """Feed chunks like a server loop would; only RemoteProtocolError may escape next_event."""
    out: list[object] = []
    for chunk in [*chunks, b""] if eof else chunks:
        conn.receive_data(chunk)
        while True:
            try:
                ev = conn.next_event()
            except RemoteProtocolError as exc:
                assert exc.code in errors.ERROR_CODES
                assert (conn.state is State.CLOSED) == exc.fatal
                if exc.fatal:
                    return out
                continue
            if ev is NEED_DATA or isinstance(ev, ConnectionClosed):
                break
            assert isinstance(ev, EVENT_TYPES)
            out.append(ev)
            if isinstance(ev, Hello) and conn.role is Role.COLLECTOR:
                conn.send(Welcome(0))
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


@given(st.binary(max_size=512), st.lists(st.integers(0, 512), max_size=8))
def test_random_bytes_raise_only_remote_errors(data: bytes, cuts: list[int]) -> None:
    for role in (Role.AGENT, Role.COLLECTOR):
        pump(Connection(role), split(data, cuts))
        pump(ready(role), split(data, cuts))


@given(st.lists(st.binary(max_size=64), max_size=20))
def test_random_bodies_in_valid_frames_raise_only_remote_errors(bodies: list[bytes]) -> None:
    data = b"".join(struct.pack(">I", len(b)) + b for b in bodies)
    pump(ready(Role.COLLECTOR), [data])
    pump(ready(Role.AGENT), [data])


def _stream() -> bytes:
    agent = ready(Role.AGENT)
    readings: list[object] = [
        ["a/b", "temperature", 1, 21.5, "C", {"k": "v"}],
        ["a/c", "gps", msgpack.Timestamp(1, 2), {"lat": 1.0, "lon": 2.0}, None, None],
    ]
    return (
        wire.encode(Hello("d", "t", "agent", "1.0", 3))
        + agent.send(Batch(1, readings))
        + agent.send(Ping(5))
        + agent.send(Batch(2, readings[:1]))
        + agent.send(Bye("done"))
    )


STREAM = _stream()
MUTATION = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "set"]), st.integers(0), st.integers(0, 255)
)


@given(
    st.lists(MUTATION, min_size=1, max_size=6),
    st.binary(max_size=16),
    st.lists(st.integers(0), max_size=5),
)
def test_mutated_valid_streams_raise_only_remote_errors(
    mutations: list[tuple[str, int, int]], trailing: bytes, cuts: list[int]
) -> None:
    data = bytearray(STREAM)
    for op, pos, byte in mutations:
        i = pos % (len(data) + 1)
        if op == "insert":
            data[i:i] = bytes([byte])
        elif data and i < len(data):
            if op == "flip":
                data[i] ^= 1 << (byte % 8)
            elif op == "delete":
                del data[i]
            else:
                data[i] = byte
    data += trailing
    pump(Connection(Role.COLLECTOR), split(bytes(data), cuts))


@given(st.binary(max_size=16))
def test_valid_stream_with_trailing_bytes_keeps_its_events(trailing: bytes) -> None:
    events = pump(Connection(Role.COLLECTOR), [STREAM + trailing])
    assert [type(e) for e in events] == [Hello, Batch, Ping, Batch, Bye]


MSGPACK_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=8) | st.dictionaries(st.text(max_size=8), inner, max_size=8)
    ),
    max_leaves=30,
)


@given(
    st.integers(0, 12),
    st.lists(MSGPACK_VALUES, max_size=8),
)
def test_well_formed_msgpack_of_any_shape_is_an_event_or_a_remote_error(
    code: int, fields: list[object]
) -> None:
    body = msgpack.packb([code, *fields], use_bin_type=True)
    try:
        event = wire.decode_body(body)
    except RemoteProtocolError as exc:
        assert not exc.fatal
    else:
        assert isinstance(event, EVENT_TYPES)
        # What was accepted re-encodes to the same event (compared as bytes: NaN != NaN).
        body2 = wire.encode_body(event)
        assert wire.encode_body(wire.decode_body(body2)) == body2
