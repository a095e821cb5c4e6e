"""The block codec: exact round trips for every value type, format checks, summaries."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.storage.sqlite import blocks

INT64 = st.integers(-(2**63), 2**63 - 1)
TS = st.integers(0, 2**63 - 1)


def _bits(values: Sequence[object]) -> list[object]:
    # Floats compared by their bits: -0.0 and 0.0 must not be confused.
    return [(type(v), struct.pack("<d", v)) if type(v) is float else (type(v), v) for v in values]


@st.composite
def columns(draw: st.DrawFn, values: st.SearchStrategy[object]) -> tuple[list[int], list[Any]]:
    ts = sorted(draw(st.sets(TS, min_size=1, max_size=60)))
    vals = draw(st.lists(values, min_size=len(ts), max_size=len(ts)))
    return ts, vals


@given(st.data())
def test_round_trip_is_exact(data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["int", "float", "decimal", "number", "text", "mixed"]))
    value_st = {
        "int": INT64,
        "float": st.floats(allow_nan=False, width=64),
        "decimal": st.integers(-(10**9), 10**9).map(lambda n: n / 1000),
        "number": st.one_of(st.integers(-(10**6), 10**6), st.floats(-1e6, 1e6)),
        "text": st.text(max_size=20),
        "mixed": st.one_of(INT64, st.floats(allow_nan=False), st.text(max_size=5), st.none()),
    }[kind]
    ts, values = data.draw(columns(value_st))
    packed = blocks.encode(ts, values)
    assert packed[0] == blocks.FORMAT_VERSION
    ts2, values2 = blocks.decode(packed)
    assert ts2 == ts
    assert _bits(values2) == _bits(values)
    plain = blocks.encode_plain(ts, values)  # the first level's small blocks
    assert plain[0] == blocks.PLAIN_VERSION
    ts3, values3 = blocks.decode(plain)
    assert ts3 == ts
    assert _bits(values3) == _bits(values)


def test_nan_and_negative_zero_round_trip() -> None:
    ts = [1, 2, 3, 4]
    values = [float("nan"), -0.0, 0.0, float("inf")]
    _, back = blocks.decode(blocks.encode(ts, values))
    assert [struct.pack("<d", v) for v in back] == [struct.pack("<d", v) for v in values]


@pytest.mark.parametrize(
    ("values", "codec"),
    [
        ([1, 5, -3, 2**40], blocks.INT_DELTA),
        ([20.25, 20.5, 19.75, 21.0], blocks.FLOAT_DECIMAL),
        ([0.1 + 0.2, 1 / 3, 2.0**-60, 1e300], blocks.FLOAT_XOR),
        (["on", "off", "on", "on"], blocks.GENERIC),
        ([1, 2.5, "x", None], blocks.GENERIC),
        ([20, 20.5, 21, -3.25], blocks.NUMBER_DECIMAL),
        ([20, 0.1 + 0.2, 21, 1.0], blocks.GENERIC),  # not decimal: no exact int/float packing
        ([-(2**63), 2**63 - 1, 0, 1], blocks.GENERIC),  # deltas overflow int64
        ([True, False, True, True], blocks.GENERIC),  # kept as bools, not 0/1
    ],
)
def test_codec_choice(values: list[Any], codec: int) -> None:
    ts = [10, 20, 30, 45]
    packed = blocks.encode(ts, values)
    assert packed[1] == codec
    assert _bits(blocks.decode(packed)[1]) == _bits(values)


def test_regular_sensor_series_packs_small() -> None:
    ts = [1_700_000_000 * 10**9 + i * 10 * 10**9 for i in range(360)]
    values = [round(20 + (i % 17) * 0.13, 2) for i in range(360)]
    packed = blocks.encode(ts, values)
    assert len(packed) / len(ts) < 2.0
    assert blocks.decode(packed) == (ts, values)


def test_single_reading() -> None:
    assert blocks.decode(blocks.encode([7], ["x"])) == ([7], ["x"])
    assert blocks.decode(blocks.encode([2**63 - 1], [1.5])) == ([2**63 - 1], [1.5])


@pytest.mark.parametrize(
    ("ts", "values"),
    [([], []), ([1, 2], [1]), ([2, 1], [1, 1]), ([1, 1], [1, 1])],
)
def test_encode_rejects_bad_columns(ts: list[int], values: list[object]) -> None:
    with pytest.raises(ValueError):
        blocks.encode(ts, values)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        blocks.encode_plain(ts, values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x03\x00\x00\x01\x00",  # unknown version
        b"\x02",  # plain, nothing after the version
        b"\x02\x92\x91\x01\x90",  # plain, 1 timestamp and no value
        b"\x02\x92\x90\x90",  # plain, empty
        b"\x02\x92\x91\x01\x91\x01\x00",  # plain, trailing bytes
        b"\x01\x00\x00\x05garbage",  # not DEFLATE
        b"\x01\x09\x00",  # too short
    ],
)
def test_decode_rejects_foreign_bytes(data: bytes) -> None:
    with pytest.raises(blocks.BlockFormatError):
        blocks.decode(data)


def test_decode_rejects_unknown_codec() -> None:
    packed = bytearray(blocks.encode([1, 2], [1, 2]))
    packed[1] = 9
    with pytest.raises(blocks.BlockFormatError, match="codec"):
        blocks.decode(bytes(packed))


def test_summary() -> None:
    s = blocks.summarize([1, 2, 3], [4, 2.5, 9])
    assert (s.count, s.first_ts, s.last_ts, s.first_value, s.last_value) == (3, 1, 3, 4, 9)
    assert (s.min, s.max, s.sum) == (2.5, 9, 15.5)
    text = blocks.summarize([1, 2], ["a", 3])
    assert (text.min, text.max, text.sum, text.first_value) == (None, None, None, "a")
    huge = blocks.summarize([1, 2], [2**62, 2**62])
    assert huge.sum == float(2**63)


def test_millisecond_clock_packs_in_millisecond_units() -> None:
    ms = 10**6
    jitter = [(i * 7919) % 41 - 20 for i in range(360)]  # +/- 20 ms, deterministic
    ts = [1_700_000_000 * 10**9 + i * 10_000 * ms + j * ms for i, j in enumerate(jitter)]
    packed = blocks.encode(ts, [1] * 360)
    assert blocks.decode(packed)[0] == ts
    ns_jitter = [t + (i * 104729) % 997 for i, t in enumerate(ts)]  # sub-ms noise: no unit
    assert len(packed) < 0.6 * len(blocks.encode(ns_jitter, [1] * 360))
