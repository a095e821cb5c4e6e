"""schemas.wire: every message round-trips, framing survives any chunking, the state machine
enforces who may send what, and limits are enforced from the header."""

from __future__ import annotations

import itertools
import struct
import tracemalloc

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import errors, wire
from schemas.errors import LocalProtocolError, RemoteProtocolError
from schemas.wire import (
    NEED_DATA,
    Ack,
    Batch,
    Bye,
    Connection,
    ConnectionClosed,
    Error,
    Event,
    Hello,
    Ping,
    Pong,
    Reading,
    Reject,
    Retry,
    Role,
    State,
    Welcome,
)

READINGS: list[object] = [
    ["greenhouse/air-temp", "temperature", 1_700_000_000_123_456_789, 21.5, "C", None],
    ["greenhouse/door", "state", 1_700_000_000_000_000_000, True, None, {"zone": "north"}],
    ["truck-7/gps", "gps", 1, {"lat": 48.1, "lon": 11.5, "alt": 520.0}, None, None],
    ["pump/count", "counter", 2, 2**63 - 1, "strokes", None],
    ["log/event", "event", 3, "door opened ✓", None, None],
]

# Every message type, with every field set away from its default.
AGENT_EVENTS: list[Event] = [
    Hello("greenhouse-1", "s3cret", agent="telemetry-agent", agent_version="0.1.0", dropped=7),
    Batch(1, READINGS),
    Batch(2**63 - 1, []),
    Ping(42),
    Pong(43),
    Error(errors.BAD_MESSAGE, "your ACK made no sense", fatal=False),
    Bye("shutting down"),
]
COLLECTOR_EVENTS: list[Event] = [
    Welcome(17, max_frame_bytes=65_536, max_batch_readings=500, heartbeat_ms=5_000),
    Ack(1, 3, 1, (Reject(2, "out_of_range", "value.lat", "too far north"),)),
    Ack(2, 0, 0, ()),
    Retry(3, "storage_unavailable", 250),
    Ping(2**63 - 1),
    Pong(0),
    Error(errors.AUTH_FAILED, "unknown device", fatal=True),
    Bye(""),
]


def handshake() -> tuple[Connection, Connection]:
    """An agent and a collector connection, back to back, both READY."""
    agent, collector = Connection(Role.AGENT), Connection(Role.COLLECTOR)
    collector.receive_data(agent.send(Hello("dev-1", "tok")))
    assert collector.next_event() == Hello("dev-1", "tok")
    agent.receive_data(collector.send(Welcome(last_seq=0)))
    assert agent.next_event() == Welcome(last_seq=0)
    assert agent.state is State.READY and collector.state is State.READY
    return agent, collector


def drain(conn: Connection) -> list[object]:
    """Every event (and ConnectionClosed) the connection yields until it needs data."""
    out: list[object] = []
    while True:
        ev = conn.next_event()
        if ev is NEED_DATA:
            return out
        out.append(ev)
        if isinstance(ev, ConnectionClosed):
            return out


def state_of(conn: Connection) -> State:
    """The state, read through a call so mypy does not keep an earlier narrowing."""
    return conn.state


def closes(event: Event) -> bool:
    return isinstance(event, Bye) or (isinstance(event, Error) and event.fatal)


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("event", AGENT_EVENTS + COLLECTOR_EVENTS, ids=repr)
def test_codec_round_trip(event: Event) -> None:
    data = wire.encode(event)
    assert struct.unpack(">I", data[:4])[0] == len(data) - 4
    assert wire.decode_body(data[4:]) == event


@pytest.mark.parametrize("event", [e for e in AGENT_EVENTS if not isinstance(e, Hello)], ids=repr)
def test_agent_message_round_trips_through_connections(event: Event) -> None:
    agent, collector = handshake()
    collector.receive_data(agent.send(event))
    assert collector.next_event() == event
    assert collector.next_event() == (ConnectionClosed() if closes(event) else NEED_DATA)


@pytest.mark.parametrize(
    "event", [e for e in COLLECTOR_EVENTS if not isinstance(e, Welcome)], ids=repr
)
def test_collector_message_round_trips_through_connections(event: Event) -> None:
    agent, collector = handshake()
    agent.receive_data(collector.send(event))
    assert agent.next_event() == event
    assert agent.next_event() == (ConnectionClosed() if closes(event) else NEED_DATA)


def test_reading_dataclass_encodes_as_the_wire_array() -> None:
    r = Reading("a/b", "gps", 5, {"lat": 1.0, "lon": 2.0}, None, {"k": "v"})
    assert r.to_wire() == ["a/b", "gps", 5, {"lat": 1.0, "lon": 2.0}, None, {"k": "v"}]
    assert wire.decode_body(wire.encode_body(Batch(1, [r]))) == Batch(1, [r.to_wire()])


@pytest.mark.parametrize(
    ("ts", "ns"),
    [
        (msgpack.Timestamp(1_700_000_000, 0), 1_700_000_000_000_000_000),  # timestamp 32
        (msgpack.Timestamp(1_700_000_000, 123_456_789), 1_700_000_000_123_456_789),  # 64
        (msgpack.Timestamp(2**34, 5), 2**34 * 10**9 + 5),  # timestamp 96
    ],
)
def test_timestamp_extension_decodes_to_int_nanoseconds(ts: msgpack.Timestamp, ns: int) -> None:
    body = msgpack.packb([3, 9, [["s", "gauge", ts, 1.0, None, None]]])
    assert wire.decode_body(body) == Batch(9, [["s", "gauge", ns, 1.0, None, None]])


def test_extra_trailing_fields_are_ignored() -> None:
    """Fields are additive within v1: a newer peer may append fields."""
    body = msgpack.packb([1, 1, "dev", "tok", "a", "1", 0, "st-1", "future", {"x": 1}])
    assert wire.decode_body(body) == Hello("dev", "tok", "a", "1", 0, stream="st-1")


def test_optional_fields_take_their_defaults() -> None:
    assert wire.decode_body(msgpack.packb([1, 1, "dev", "tok"])) == Hello("dev", "tok")
    assert wire.decode_body(msgpack.packb([2, 1, 5])) == Welcome(5)
    assert wire.decode_body(msgpack.packb([6])) == Ping(0)
    assert wire.decode_body(msgpack.packb([8, "idle_timeout"])) == Error("idle_timeout", "")
    assert wire.decode_body(msgpack.packb([9])) == Bye("")


# ---------------------------------------------------------------------------- streams


def agent_stream() -> tuple[bytes, list[object]]:
    """Bytes an agent sends over a whole session, and the events the collector must see."""
    agent, _ = handshake()
    hello = Hello("dev-1", "tok")  # what `handshake` sent
    events: list[Event] = [Batch(1, READINGS), Ping(1), Batch(2, READINGS[:1]), Pong(2), Bye()]
    data = wire.encode(hello) + b"".join(agent.send(ev) for ev in events)
    return data, [hello, *events, ConnectionClosed()]


STREAM, STREAM_EVENTS = agent_stream()


def feed_chunks(chunks: list[bytes]) -> list[object]:
    """Feed chunks (then EOF) to a collector that answers HELLO with WELCOME."""
    conn = Connection(Role.COLLECTOR)
    out: list[object] = []
    for chunk in [*chunks, b""]:
        conn.receive_data(chunk)
        while (ev := conn.next_event()) is not NEED_DATA:
            out.append(ev)
            if isinstance(ev, Hello):
                conn.send(Welcome(0))
            if isinstance(ev, ConnectionClosed):
                return out
    raise AssertionError("EOF did not close the connection")


def test_whole_stream_gives_every_event() -> None:
    assert feed_chunks([STREAM]) == STREAM_EVENTS


def test_one_byte_at_a_time_gives_the_same_events() -> None:
    assert feed_chunks([STREAM[i : i + 1] for i in range(len(STREAM))]) == STREAM_EVENTS


@given(st.lists(st.integers(0, len(STREAM)), max_size=40))
def test_any_chunking_gives_the_same_events(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    # b"" means EOF in this API, so empty chunks are not sent.
    chunks = [STREAM[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    assert feed_chunks(chunks) == STREAM_EVENTS


def test_trailing_partial_frame_then_eof_is_truncated() -> None:
    with pytest.raises(RemoteProtocolError) as exc:
        feed_chunks([STREAM[:-2]])  # BYE minus its last two bytes
    assert (exc.value.code, exc.value.fatal) == (errors.TRUNCATED_FRAME, True)


def test_trailing_bytes_wait_for_the_rest_of_the_frame() -> None:
    agent, collector = handshake()
    data = agent.send(Ping(1)) + agent.send(Ping(2))
    collector.receive_data(data[:-1])
    assert drain(collector) == [Ping(1)]
    assert collector.next_event() is NEED_DATA
    collector.receive_data(data[-1:])
    assert drain(collector) == [Ping(2)]


def test_eof_inside_the_header_is_truncated() -> None:
    conn = Connection(Role.COLLECTOR)
    conn.receive_data(b"\x00\x00")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="header") as exc:
        conn.next_event()
    assert exc.value.code == errors.TRUNCATED_FRAME


def test_clean_eof_closes() -> None:
    agent, collector = handshake()
    collector.receive_data(b"")
    assert isinstance(collector.next_event(), ConnectionClosed)
    assert collector.state is State.CLOSED
    collector.receive_data(agent.send(Ping(1)))  # data after close is ignored
    assert isinstance(collector.next_event(), ConnectionClosed)


def test_back_to_back_session() -> None:
    agent, collector = handshake()
    collector.receive_data(agent.send(Batch(1, READINGS)) + agent.send(Ping(7)))
    assert drain(collector) == [Batch(1, READINGS), Ping(7)]
    ack = Ack(1, 4, 0, (Reject(1, "bad_unit", "unit", "no"),))
    agent.receive_data(collector.send(ack) + collector.send(Pong(7)) + collector.send(Ping(8)))
    assert drain(agent) == [ack, Pong(7), Ping(8)]
    collector.receive_data(agent.send(Pong(8)) + agent.send(Batch(2, [])))
    assert drain(collector) == [Pong(8), Batch(2, [])]
    agent.receive_data(collector.send(Retry(2, "overloaded", 100)))
    assert drain(agent) == [Retry(2, "overloaded", 100)]
    # Non-fatal ERROR keeps the connection open; BYE closes both sides.
    agent.receive_data(collector.send(Error(errors.BAD_MESSAGE, "?", fatal=False)))
    assert drain(agent) == [Error(errors.BAD_MESSAGE, "?", fatal=False)]
    assert agent.state is State.READY
    collector.receive_data(agent.send(Bye("bye")))
    assert state_of(agent) is State.CLOSED
    assert drain(collector) == [Bye("bye"), ConnectionClosed()]
    assert collector.state is State.CLOSED


def test_fatal_error_closes_the_receiver() -> None:
    agent = Connection(Role.AGENT)
    collector = Connection(Role.COLLECTOR)
    collector.receive_data(agent.send(Hello("d", "bad")))
    collector.next_event()
    agent.receive_data(collector.send(Error(errors.AUTH_FAILED, "no")))
    assert collector.state is State.CLOSED
    assert drain(agent) == [Error(errors.AUTH_FAILED, "no"), ConnectionClosed()]
    assert agent.state is State.CLOSED


# ---------------------------------------------------------------------------- limits


def test_oversized_declared_length_is_refused_from_the_header_alone() -> None:
    conn = Connection(Role.COLLECTOR)
    conn.receive_data(struct.pack(">I", wire.MAX_FRAME_BYTES + 1))  # header only
    with pytest.raises(RemoteProtocolError) as exc:
        conn.next_event()
    assert (exc.value.code, exc.value.fatal) == (errors.FRAME_TOO_LARGE, True)
    assert conn.state is State.CLOSED
    conn.receive_data(b"\x00" * 1000)  # the body is never buffered
    assert conn.bytes_received == 4


def test_frame_at_the_limit_is_waited_for() -> None:
    conn = Connection(Role.COLLECTOR, max_frame_bytes=100)
    conn.receive_data(struct.pack(">I", 100))
    assert conn.next_event() is NEED_DATA
    conn = Connection(Role.COLLECTOR, max_frame_bytes=100)
    conn.receive_data(struct.pack(">I", 101))
    with pytest.raises(RemoteProtocolError, match="101"):
        conn.next_event()


def test_sending_an_oversized_frame_is_local_misuse() -> None:
    agent, _ = handshake()
    agent.max_frame_bytes = 200
    with pytest.raises(LocalProtocolError, match="exceeds"):
        agent.send(Batch(1, READINGS * 10))
    assert agent.state is State.READY


def test_empty_body_is_a_bad_frame() -> None:
    conn = Connection(Role.COLLECTOR)
    conn.receive_data(b"\x00\x00\x00\x00" + wire.encode(Hello("d", "t")))
    with pytest.raises(RemoteProtocolError) as exc:
        conn.next_event()
    assert (exc.value.code, exc.value.fatal) == (errors.MALFORMED_FRAME, False)
    assert conn.next_event() == Hello("d", "t")  # the stream stayed in sync


HUGE_DECLARATIONS = {
    "str32 of 4 GiB": b"\x93\x03\x01\x91\x96\xdb\xff\xff\xff\xff",
    "str over MAX_STR_BYTES": msgpack.packb([9, "x" * (wire.MAX_STR_BYTES + 1)]),
    "message array32": b"\xdd\xff\xff\xff\xff\x09",
    "message of 33 fields": msgpack.packb([9, *range(32)]),
    "readings array32": b"\x93\x03\x01\xdd\x7f\xff\xff\xff",
    "readings over MAX_BATCH_READINGS": msgpack.packb([3, 1, [0] * 10_001]),
    "readings shorter than declared": b"\x93\x03\x01\xdc\x00\x03\x90\x90",
    "inner array32": b"\x93\x03\x01\x91\xdd\xff\xff\xff\xff",
    "map32": b"\x93\x03\x01\x91\xdf\xff\xff\xff\xff",
    "map over MAX_MAP_ENTRIES": msgpack.packb([3, 1, [{str(i): i for i in range(65)}]]),
    "bin": b"\x92\x09\xc4\x01x",
    "ext32": b"\x92\x09\xc9\xff\xff\xff\xff\x05",
}


@pytest.mark.parametrize("body", HUGE_DECLARATIONS.values(), ids=HUGE_DECLARATIONS.keys())
def test_huge_declared_lengths_are_refused(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as exc:
        wire.decode_body(body)
    assert (exc.value.code, exc.value.fatal) == (errors.MALFORMED_FRAME, False)


def test_nested_array_headers_do_not_preallocate() -> None:
    """1,000 nested headers each declaring 10,000 elements: refused, without 80 MB of slots."""
    body = b"\x93\x03\x01\x91" + b"\xdc\x27\x10" * 1000
    tracemalloc.start()
    try:
        with pytest.raises(RemoteProtocolError) as exc:
            wire.decode_body(body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert exc.value.code == errors.MALFORMED_FRAME
    assert peak < 1_000_000


def test_nesting_beyond_the_decoder_stack_is_refused() -> None:
    deep = b"\x91" * (wire.MSGPACK_MAX_DEPTH + 10) + b"\x00"
    with pytest.raises(RemoteProtocolError) as exc:
        wire.decode_body(b"\x93\x03\x01\x91" + deep)
    assert exc.value.code == errors.MALFORMED_FRAME


def test_moderate_nesting_decodes_but_never_validates() -> None:
    """Nesting below the decoder's stack limit stays `object` here; validation rejects it."""
    from schemas.readings import ReadingValidator

    value: object = 1.0
    for _ in range(50):
        value = [value]
    event = wire.decode_body(msgpack.packb([3, 1, [["s", "gauge", 1, value, None, None]]]))
    assert isinstance(event, Batch)
    result = ReadingValidator().validate_batch(event.readings)
    assert [(r.code, r.path) for r in result.rejects] == [("wrong_type", "value")]


def test_bad_frame_budget_closes_the_connection() -> None:
    conn = Connection(Role.COLLECTOR, bad_frame_budget=3)
    bad = frame(b"\xc1")
    for _ in range(3):
        conn.receive_data(bad)
        with pytest.raises(RemoteProtocolError) as exc:
            conn.next_event()
        assert exc.value.fatal is False
        assert conn.state is State.AWAIT_HELLO
    conn.receive_data(bad + wire.encode(Hello("d", "t")))
    with pytest.raises(RemoteProtocolError) as exc:
        conn.next_event()
    assert (exc.value.code, exc.value.fatal) == (errors.TOO_MANY_BAD_FRAMES, True)
    assert conn.state is State.CLOSED
    assert isinstance(conn.next_event(), ConnectionClosed)


def test_kept_exception_does_not_pin_the_buffer() -> None:
    """A caller may keep a RemoteProtocolError (logging, tests) and go on reading."""
    conn = Connection(Role.COLLECTOR)
    conn.receive_data(wire.encode(Hello("d", "t")) + frame(b"\x92\x09\xc1"))
    assert conn.next_event() == Hello("d", "t")
    with pytest.raises(RemoteProtocolError) as kept:
        conn.next_event()
    for _ in range(100):  # compacts and grows the buffer
        conn.receive_data(wire.encode(Ping(1)))
    assert kept.value.code == errors.MALFORMED_FRAME
    assert drain(conn) == [Ping(1)] * 100
    assert conn.bad_frames == 1


BAD_MESSAGES = {
    "not an array": msgpack.packb({"type": 1}),
    "empty array": msgpack.packb([]),
    "type code is a string": msgpack.packb(["HELLO"]),
    "type code is a bool": msgpack.packb([True]),
    "unknown type": msgpack.packb([99]),
    "HELLO missing token": msgpack.packb([1, 1, "dev"]),
    "HELLO device_id int": msgpack.packb([1, 1, 5, "tok"]),
    "BATCH seq negative": msgpack.packb([3, -1, []]),
    "BATCH seq float": msgpack.packb([3, 1.0, []]),
    "BATCH seq bool": msgpack.packb([3, True, []]),
    "BATCH seq above int64": msgpack.packb([3, 2**63, []]),
    "BATCH readings not array": msgpack.packb([3, 1, {"a": 1}]),
    "BATCH readings missing": msgpack.packb([3, 1]),
    "ACK reject not array": msgpack.packb([4, 1, 0, 0, ["x"]]),
    "ACK reject index str": msgpack.packb([4, 1, 0, 0, [["0", "c", "p", "m"]]]),
    "ERROR fatal int": msgpack.packb([8, "c", "m", 1]),
    "WELCOME last_seq nil": msgpack.packb([2, 1, None]),
}


@pytest.mark.parametrize("body", BAD_MESSAGES.values(), ids=BAD_MESSAGES.keys())
def test_ill_formed_messages_are_bad_message(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as exc:
        wire.decode_body(body)
    assert (exc.value.code, exc.value.fatal) == (errors.BAD_MESSAGE, False)


@pytest.mark.parametrize(
    "body",
    [b"", b"\xc1", b"\x92\x09", b"\x91\x09\x00", msgpack.packb([9, "x"]) + b"\x00"],
    ids=["empty", "never-used byte", "truncated", "trailing byte", "trailing after BYE"],
)
def test_undecodable_bodies_are_malformed(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as exc:
        wire.decode_body(body)
    assert exc.value.code == errors.MALFORMED_FRAME


# ---------------------------------------------------------------------------- state machine


def test_agent_cannot_send_batch_before_welcome() -> None:
    agent = Connection(Role.AGENT)
    with pytest.raises(LocalProtocolError, match="cannot send Batch"):
        agent.send(Batch(1, []))
    agent.send(Hello("d", "t"))
    with pytest.raises(LocalProtocolError, match="await_welcome"):
        agent.send(Batch(1, []))
    with pytest.raises(LocalProtocolError):
        agent.send(Hello("d", "t"))


@pytest.mark.parametrize("event", [Welcome(0), Ack(1, 0, 0), Retry(1, "x", 1), Ping(0)])
def test_collector_cannot_speak_before_hello(event: Event) -> None:
    with pytest.raises(LocalProtocolError):
        Connection(Role.COLLECTOR).send(event)


@pytest.mark.parametrize(
    ("role", "event"),
    [
        (Role.AGENT, Ack(1, 0, 0)),
        (Role.AGENT, Welcome(0)),
        (Role.AGENT, Retry(1, "x", 1)),
        (Role.COLLECTOR, Hello("d", "t")),
        (Role.COLLECTOR, Batch(1, [])),
    ],
)
def test_role_cannot_send_the_other_roles_messages(role: Role, event: Event) -> None:
    agent, collector = handshake()
    conn = agent if role is Role.AGENT else collector
    with pytest.raises(LocalProtocolError):
        conn.send(event)
    assert conn.state is State.READY


def test_only_error_and_bye_may_be_sent_after_close() -> None:
    agent, _ = handshake()
    agent.send(Bye())
    with pytest.raises(LocalProtocolError, match="closed"):
        agent.send(Ping(1))
    assert wire.decode_body(agent.send(Error("x", "y"))[4:]) == Error("x", "y")
    assert wire.decode_body(agent.send(Bye("again"))[4:]) == Bye("again")


def test_encoding_a_non_event_is_local_misuse() -> None:
    with pytest.raises(LocalProtocolError):
        wire.encode("HELLO")  # type: ignore[arg-type]  # deliberate misuse


def test_message_before_hello_is_fatal() -> None:
    conn = Connection(Role.COLLECTOR)
    conn.receive_data(wire.encode(Batch(1, [])))
    with pytest.raises(RemoteProtocolError) as exc:
        conn.next_event()
    assert (exc.value.code, exc.value.fatal) == (errors.UNEXPECTED_MESSAGE, True)
    assert conn.state is State.CLOSED


def test_wrong_direction_message_when_ready_is_a_bad_frame() -> None:
    agent, collector = handshake()
    collector.receive_data(wire.encode(Ack(1, 0, 0)) + wire.encode(Hello("d", "t")))
    for _ in range(2):
        with pytest.raises(RemoteProtocolError) as exc:
            collector.next_event()
        assert (exc.value.code, exc.value.fatal) == (errors.UNEXPECTED_MESSAGE, False)
    assert collector.state is State.READY
    assert collector.bad_frames == 2
    agent.receive_data(wire.encode(Batch(1, [])))
    with pytest.raises(RemoteProtocolError):
        agent.next_event()


def test_agent_rejects_batch_as_first_reply() -> None:
    agent = Connection(Role.AGENT)
    agent.send(Hello("d", "t"))
    agent.receive_data(wire.encode(Ack(1, 0, 0)))
    with pytest.raises(RemoteProtocolError) as exc:
        agent.next_event()
    assert exc.value.fatal and agent.state is State.CLOSED
