"""Generators of hostile input for the collector: malformed frames and invalid readings.

Every generated item is `(category, frame_bytes, expect)`, where `expect` says what a correct
collector answers: "error" (an ERROR frame, the frame is discarded), "ack" (a well-formed
BATCH whose readings are all rejected, answered by an ACK listing every reject), or "close"
(the connection must be closed: an oversized declared length or a truncated frame).

Pure functions of a seeded `random.Random`: the same seed gives the same frames.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from typing import Final, Literal

import msgpack

from schemas import wire
from schemas.errors import RemoteProtocolError

Expect = Literal["error", "ack", "close"]
_HDR = struct.Struct(">I")
TS0: Final = 1_700_000_000_000_000_000


def frame(body: bytes) -> bytes:
    return _HDR.pack(len(body)) + body


def valid_batch(seq: int, n: int = 3, ts0: int = TS0) -> bytes:
    readings = [[f"fuzz/s{i}", "gauge", ts0 + i, float(i), None, None] for i in range(n)]
    return wire.encode(wire.Batch(seq, readings))


def _bad_readings(rng: random.Random, ts0: int = TS0) -> list[object]:
    """Readings that decode fine but must each be rejected by validation."""
    ts = ts0 + rng.randrange(10**9)
    choices: list[object] = [
        ["s", "temperature", ts, float("nan"), "C", None],
        ["s", "temperature", ts, float("inf"), "C", None],
        ["s", "temperature", ts, -1e9, "C", None],
        ["s", "humidity", ts, 101.0, "%", None],
        ["s", "counter", ts, -5, None, None],
        ["s", "counter", ts, 1.5, None, None],
        ["s", "gauge", -1, 1.0, None, None],
        ["s", "gauge", ts, "text", None, None],
        ["s", "gauge", ts, [1, [2, [3]]], None, None],
        ["s", "gauge", ts, {"a": {"b": {"c": 1}}}, None, None],
        ["s", "no-such-kind", ts, 1.0, None, None],
        ["bad sensor name", "gauge", ts, 1.0, None, None],
        ["s", "gauge", ts, 1.0, None, {"bad key": "v"}],
        ["s", "gps", ts, {"lat": 91.0, "lon": 0.0}, None, None],
        ["s", "gps", ts, {"lat": 1.0}, None, None],
        ["s", "state", ts, 2, None, None],
        ["s", "event", ts, "x" * 2000, None, None],
        ["s", "gauge"],
        "not a reading",
        42,
        None,
    ]
    return [rng.choice(choices) for _ in range(rng.randint(1, 20))]


def _deep(depth: int) -> bytes:
    return b"\x91" * depth + b"\xc0"


def hostile_frames(
    rng: random.Random, count: int, seq0: int = 1, ts0: int = TS0
) -> Iterator[tuple[str, bytes, Expect]]:
    """Yield `count` hostile frames (excluding the connection-closing kinds).

    `ts0` is the base timestamp of the readings: pass a recent one when the test compares
    stored rows with ACK counts, so the compactor does not move them meanwhile.
    """
    seq = seq0
    valid = [valid_batch(i + 1, ts0=ts0) for i in range(4)] + [
        wire.encode(wire.Ping(7)),
        wire.encode(wire.Bye("x")),
    ]
    for _ in range(count):
        kind = rng.randrange(10)
        if kind == 0:
            body = rng.randbytes(rng.randint(1, 64))
            # Random bytes can happen to be a valid message; skip those.
            try:
                wire.decode_body(body)
                continue
            except RemoteProtocolError:
                yield "random", frame(body), "error"
        elif kind == 1:
            yield "deep", frame(_deep(rng.choice([5, 100, 1000, 5000]))), "error"
        elif kind == 2:
            # Declared array/map/str lengths far beyond what follows (size bombs).
            bomb = rng.choice(
                [
                    b"\xdd\xff\xff\xff\xff",
                    b"\xdf\xff\xff\xff\xff",
                    b"\xdb\xff\xff\xff\xff",
                    b"\x93\x03\x01\xdd\x00\x0f\xff\xff",
                ]
            )
            yield "size-bomb", frame(bomb), "error"
        elif kind == 3:
            yield "wrong-type", frame(msgpack.packb([3, "seq", "readings"])), "error"
        elif kind == 4:
            yield "huge-int", frame(msgpack.packb([3, 2**64 - 1, []])), "error"
        elif kind == 5:
            yield "unknown-type", frame(msgpack.packb([rng.randint(10, 200), 1])), "error"
        elif kind == 6:
            # Mutate a valid BATCH body: flip bytes, keep the length prefix consistent.
            mutable = bytearray(rng.choice(valid)[4:])
            for _ in range(rng.randint(1, 4)):
                mutable[rng.randrange(len(mutable))] = rng.randrange(256)
            try:
                ev = wire.decode_body(bytes(mutable))
            except RemoteProtocolError:
                yield "mutated", frame(bytes(mutable)), "error"
                continue
            if not isinstance(ev, wire.Batch):
                continue  # mutated into a legal non-batch message: not hostile
            seq += 1
            yield "mutated-batch", frame(wire.encode_body(wire.Batch(seq, ev.readings))), "ack"
        elif kind == 7:
            yield "empty", frame(b""), "error"
        elif kind == 8:
            seq += 1
            yield "bad-readings", wire.encode(wire.Batch(seq, _bad_readings(rng, ts0))), "ack"
        else:
            yield "trailing", frame(msgpack.packb([6, 1]) + b"\x00\x01"), "error"


def closing_frames() -> list[tuple[str, bytes]]:
    """Frames after which the collector must close the connection."""
    return [
        ("oversized-length", _HDR.pack(wire.MAX_FRAME_BYTES + 1)),
        ("max-length", b"\xff\xff\xff\xff"),
    ]
