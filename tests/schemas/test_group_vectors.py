"""Runs tests/vectors/groups.json (series groups, protocol v1.2) against the reference
implementation: GBATCH frames decode and encode, malformed ones get the ERROR the vector
names, and every group member gets the reject its reading gets alone in a BATCH."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from collector.ingest.prepare import Ingest
from schemas import errors, wire
from schemas.errors import LocalProtocolError, RemoteProtocolError
from schemas.wire import NEED_DATA, Connection, Hello, Role, State, Welcome

DOC = json.loads(
    (Path(__file__).resolve().parents[2] / "tests" / "vectors" / "groups.json").read_text("utf-8")
)
FRAMES: list[dict[str, Any]] = DOC["frames"]
INVALID: list[dict[str, Any]] = DOC["invalid"]
GROUPS: list[dict[str, Any]] = DOC["groups"]
INGEST = Ingest.from_kinds()


def test_vector_names_are_unique() -> None:
    assert DOC["description"]
    names = [v["name"] for v in FRAMES + INVALID + GROUPS]
    assert len(names) == len(set(names))


def collector_ready(minor: int) -> Connection:
    conn = Connection(Role.COLLECTOR)
    conn.receive_data(wire.encode(Hello("d", "t")))
    assert isinstance(conn.next_event(), Hello)
    conn.send(Welcome(0, minor=minor))
    assert conn.state is State.READY
    return conn


def event_from(message: dict[str, Any]) -> wire.Event:
    f = message["fields"]
    if message["type"] == "GBATCH":
        return wire.Batch(f["seq"], f["readings"], f["groups"])
    assert message["type"] == "WELCOME"
    return Welcome(**f)


@pytest.mark.parametrize("vector", FRAMES, ids=[v["name"] for v in FRAMES])
def test_valid_frame(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    assert struct.unpack(">I", data[:4])[0] == len(data) - 4
    expected = event_from(vector["message"])
    assert wire.decode_body(data[4:]) == expected
    if vector["canonical"]:
        assert wire.encode(expected) == data
    if isinstance(expected, wire.Batch):
        assert data[5] == wire.MessageType.GBATCH
        conn = collector_ready(wire.GROUPS_MINOR)
        for i in range(len(data) - 1):
            conn.receive_data(data[i : i + 1])
            assert conn.next_event() is NEED_DATA
        conn.receive_data(data[-1:])
        assert conn.next_event() == expected


@pytest.mark.parametrize("vector", INVALID, ids=[v["name"] for v in INVALID])
def test_invalid_frame(vector: dict[str, Any]) -> None:
    conn = collector_ready(vector["welcome_minor"])
    conn.receive_data(bytes.fromhex(vector["hex"]))
    for step in vector["expect"]:
        assert step["error"] in errors.ERROR_CODES
        with pytest.raises(RemoteProtocolError) as exc:
            conn.next_event()
        assert (exc.value.code, exc.value.fatal, exc.value.seq) == (
            step["error"],
            step["fatal"],
            step.get("seq", 0),
        )
    assert conn.next_event() is NEED_DATA


@pytest.mark.parametrize("vector", GROUPS, ids=[v["name"] for v in GROUPS])
def test_group_rejects(vector: dict[str, Any]) -> None:
    event = wire.decode_body(bytes.fromhex(vector["hex"])[4:])
    assert isinstance(event, wire.Batch) and event.size == vector["readings"]
    prepared = INGEST.prepare(event.seq, event.readings, 0, event.groups)
    got = [
        {"index": r.index, "code": r.code, "path": r.path, "message": r.message}
        for r in prepared.rejects
    ]
    assert (prepared.valid_count, got) == (vector["valid"], vector["rejects"])
    # Each member alone in a BATCH gets the same reject (or none).
    for i, reading in enumerate(wire.expand_groups(event.readings, event.groups)):
        alone = INGEST.prepare(1, [reading], 0)
        want = [r for r in got if r["index"] == i]
        assert [(r.code, r.path, r.message) for r in alone.rejects] == [
            (r["code"], r["path"], r["message"]) for r in want
        ]


def test_an_agent_sends_gbatch_only_to_a_collector_that_announced_it() -> None:
    group = wire.ReadingGroup("s", "gauge", [1, 2], [1.0, 2.0])
    for minor, allowed in ((0, False), (1, False), (2, True), (3, True)):
        conn = Connection(Role.AGENT)
        conn.send(Hello("d", "t"))
        conn.receive_data(wire.encode(Welcome(0, minor=minor)))
        assert isinstance(conn.next_event(), Welcome)
        if allowed:
            data = conn.send(wire.Batch(1, [], [group]))
            assert wire.decode_body(data[4:]) == wire.Batch(1, [], [group.to_wire()])
        else:
            with pytest.raises(LocalProtocolError):
                conn.send(wire.Batch(1, [], [group]))
            conn.send(wire.Batch(1, wire.expand_groups([], [group])))  # rows are fine


def test_protocol_doc_states_the_group_limit_and_the_example() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text("utf-8")
    assert f"| `MAX_GROUP_READINGS` | {wire.MAX_GROUP_READINGS} |" in doc
    assert "| 10 | GBATCH | A |" in doc
    example = next(v for v in FRAMES if v["name"] == "gbatch/example")
    group = example["message"]["fields"]["groups"][0]
    assert all(str(x) in doc for x in (*group[4], *group[5]))
