"""Runs every language-neutral vector in tests/vectors/ against the reference implementation,
and checks that the worked example in docs/protocol.md is the one in the vectors."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import pytest

from schemas import errors, readings, wire
from schemas.errors import RemoteProtocolError
from schemas.readings import ReadingValidator
from schemas.wire import NEED_DATA, Connection, Event, Hello, Reject, Role, State, Welcome

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors"

TYPES: dict[str, type[Event]] = {
    "HELLO": wire.Hello,
    "WELCOME": wire.Welcome,
    "BATCH": wire.Batch,
    "ACK": wire.Ack,
    "RETRY": wire.Retry,
    "PING": wire.Ping,
    "PONG": wire.Pong,
    "ERROR": wire.Error,
    "BYE": wire.Bye,
}
REJECT_CODES = {
    v
    for k, v in vars(readings).items()
    if k.isupper() and not k.startswith("_") and isinstance(v, str) and v.islower()
}


def load(name: str) -> list[dict[str, Any]]:
    doc = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    vectors: list[dict[str, Any]] = doc["vectors"]
    assert doc["description"]
    names = [v["name"] for v in vectors]
    assert len(names) == len(set(names)), f"duplicate vector names in {name}"
    return vectors


VALID = load("frames_valid.json")
INVALID = load("frames_invalid.json")
READINGS = load("readings.json")


def event_from(message: dict[str, Any]) -> Event:
    fields = dict(message["fields"])
    if message["type"] == "ACK":
        fields["rejects"] = tuple(Reject(**r) for r in fields["rejects"])
    return TYPES[message["type"]](**fields)


def connection_in(role: Role, state: str) -> Connection:
    """A connection of `role` driven to `state` by a real handshake."""
    conn = Connection(role)
    if state == "await_hello":
        return conn
    if role is Role.AGENT:
        conn.send(Hello("d", "t"))
        if state == "ready":
            conn.receive_data(wire.encode(Welcome(0)))
            assert isinstance(conn.next_event(), Welcome)
    else:
        conn.receive_data(wire.encode(Hello("d", "t")))
        assert isinstance(conn.next_event(), Hello)
        if state == "ready":
            conn.send(Welcome(0))
    assert conn.state is State(state)
    return conn


@pytest.mark.parametrize("vector", VALID, ids=[v["name"] for v in VALID])
def test_valid_frame(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    (length,) = struct.unpack(">I", data[:4])
    assert length == len(data) - 4
    expected = event_from(vector["message"])
    assert wire.decode_body(data[4:]) == expected
    if vector["canonical"]:
        assert wire.encode(expected) == data
    # The same bytes through a receiving connection, in a state that allows the message.
    directions = {"agent->collector": [Role.COLLECTOR], "collector->agent": [Role.AGENT]}
    for role in directions.get(vector["direction"], [Role.AGENT, Role.COLLECTOR]):
        state = "ready"
        if isinstance(expected, Hello):
            state = "await_hello"
        elif isinstance(expected, Welcome):
            state = "await_welcome"
        conn = connection_in(role, state)
        conn.receive_data(data)
        assert conn.next_event() == expected
        # One byte at a time: nothing before the last byte, the same event after it.
        conn = connection_in(role, state)
        for i in range(len(data) - 1):
            conn.receive_data(data[i : i + 1])
            assert conn.next_event() is NEED_DATA
        conn.receive_data(data[-1:])
        assert conn.next_event() == expected


def test_valid_vectors_cover_every_message_type() -> None:
    assert {v["message"]["type"] for v in VALID} == set(TYPES)


@pytest.mark.parametrize("vector", INVALID, ids=[v["name"] for v in INVALID])
def test_invalid_frame(vector: dict[str, Any]) -> None:
    conn = connection_in(Role(vector["receiver"]), vector["state"])
    conn.receive_data(bytes.fromhex(vector["hex"]))
    if vector["eof"]:
        conn.receive_data(b"")
    for step in vector["expect"]:
        if "event" in step:
            event = conn.next_event()
            assert type(event).__name__.upper() == step["event"]
            continue
        assert step["error"] in errors.ERROR_CODES
        with pytest.raises(RemoteProtocolError) as exc:
            conn.next_event()
        assert (exc.value.code, exc.value.fatal) == (step["error"], step["fatal"])
        assert exc.value.seq == step.get("seq", 0)  # v1.1: the ERROR names the BATCH
        assert (conn.state is State.CLOSED) == step["fatal"]
    if conn.state is not State.CLOSED and not vector["eof"]:
        assert conn.next_event() is NEED_DATA


@pytest.fixture(scope="module")
def validator() -> ReadingValidator:
    return ReadingValidator()


@pytest.mark.parametrize("vector", READINGS, ids=[v["name"] for v in READINGS])
def test_reading(validator: ReadingValidator, vector: dict[str, Any]) -> None:
    # Wrap the reading in a BATCH frame body: [3, 1, [reading]].
    event = wire.decode_body(b"\x93\x03\x01\x91" + bytes.fromhex(vector["hex"]))
    assert isinstance(event, wire.Batch)
    if vector["reading"] is not None:
        assert event.readings == [vector["reading"]]
    result = validator.validate_batch(event.readings)
    if vector["accept"]:
        assert result.rejects == []
        assert [list(r) for r in result.valid] == [vector["validated"]]
    else:
        assert vector["code"] in REJECT_CODES
        assert result.valid == []
        assert [(r.code, r.path) for r in result.rejects] == [(vector["code"], vector["path"])]


def test_reading_vectors_cover_every_kind_and_both_outcomes() -> None:
    covered = {v["reading"][1] for v in READINGS if v["reading"] and isinstance(v["reading"], list)}
    assert {k.name for k in ReadingValidator().kinds.values()} <= covered
    assert {v["accept"] for v in READINGS} == {True, False}


def test_protocol_doc_worked_example_matches_the_vectors() -> None:
    doc = re.sub(r"\s+", "", (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8"))
    examples = [v for v in VALID if v["name"].startswith("example/")]
    assert len(examples) == 4
    for v in examples:
        assert v["hex"] in doc, f"docs/protocol.md lacks the hex of {v['name']}"
