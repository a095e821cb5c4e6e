"""The block codec: exact round trips for every value type, format checks, summaries.

Version 3 (numeric columns through pcodec) has its own properties in test_numeric_blocks.py;
here `encode` picks the version and version 1 (`encode_deflate`) keeps its own checks, since
blocks written by it stay in databases and must stay readable.
"""

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


def _for_pcodec(values: Sequence[object]) -> bool:
    """Ints within int64, floats, or both with every int exact as a float64."""
    types = {type(v) for v in values}
    ints = [v for v in values if isinstance(v, int)]
    if types == {int}:
        return all(-(2**63) <= v < 2**63 for v in ints)
    return types <= {int, float} and all(abs(v) <= 2**53 for v in ints)


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
    assert packed[0] == (blocks.PCO_VERSION if _for_pcodec(values) else blocks.FORMAT_VERSION)
    ts2, values2 = blocks.decode(packed)
    assert ts2 == ts
    assert _bits(values2) == _bits(values)
    old = blocks.encode_deflate(ts, values)  # version 1, as in databases written before
    assert old[0] == blocks.FORMAT_VERSION
    assert blocks.decode(old)[0] == ts
    assert _bits(blocks.decode(old)[1]) == _bits(values)
    plain = blocks.encode_plain(ts, values)  # the first level's small blocks
    assert plain[0] == blocks.PLAIN_VERSION
    ts3, values3 = blocks.decode(plain)
    assert ts3 == ts
    assert _bits(values3) == _bits(values)


@pytest.mark.parametrize("encode", [blocks.encode, blocks.encode_deflate])
def test_nan_and_negative_zero_round_trip(encode: Any) -> None:
    ts = [1, 2, 3, 4]
    values = [float("nan"), -0.0, 0.0, float("inf")]
    _, back = blocks.decode(encode(ts, values))
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
def test_version_1_codec_choice(values: list[Any], codec: int) -> None:
    ts = [10, 20, 30, 45]
    packed = blocks.encode_deflate(ts, values)
    assert packed[1] == codec
    assert _bits(blocks.decode(packed)[1]) == _bits(values)


@pytest.mark.parametrize(
    ("values", "version"),
    [
        ([1, 5, -3, 2**40], blocks.PCO_VERSION),
        ([20.25, 20.5, 19.75, 21.0], blocks.PCO_VERSION),
        ([20, 20.5, 21, -3.25], blocks.PCO_VERSION),
        ([-(2**63), 2**63 - 1, 0, 1], blocks.PCO_VERSION),  # pcodec takes any int64
        (["on", "off", "on", "on"], blocks.FORMAT_VERSION),
        ([1, 2.5, "x", None], blocks.FORMAT_VERSION),
        ([True, False, True, True], blocks.FORMAT_VERSION),  # kept as bools, not 0/1
        ([2**63, 1, 2, 3], blocks.FORMAT_VERSION),  # beyond int64
        ([2**53 + 1, 0.5, 1.5, 2.5], blocks.FORMAT_VERSION),  # int not exact as a float
    ],
)
def test_version_choice(values: list[Any], version: int) -> None:
    ts = [10, 20, 30, 45]
    packed = blocks.encode(ts, values)
    assert packed[0] == version
    assert _bits(blocks.decode(packed)[1]) == _bits(values)


@pytest.mark.parametrize("encode", [blocks.encode, blocks.encode_deflate])
def test_regular_sensor_series_packs_small(encode: Any) -> None:
    ts = [1_700_000_000 * 10**9 + i * 10 * 10**9 for i in range(360)]
    values = [round(20 + (i % 17) * 0.13, 2) for i in range(360)]
    packed = encode(ts, values)
    assert len(packed) / len(ts) < 2.0
    assert blocks.decode(packed) == (ts, values)


T0 = 1_767_225_600 * 10**9


# Written by the version-1 encoder as it was before version 3 existed (every value codec):
# databases hold such blocks, and reading them must not change.
@pytest.mark.parametrize(
    ("hex_block", "ts", "values"),
    [
        (
            "0100000480c8afa02563606400835f40fc16880381b80888db805802885999185819f00000",
            [T0, T0 + 10**10, T0 + 2 * 10**10, T0 + 3 * 10**10],
            [5, 7, 7, 12],
        ),
        (
            "0101020380c8afa02563606400825f0c0c6f19180219188a1818da18182418185eb23d6067f8cf808100",
            [T0, T0 + 10**10, T0 + 2 * 10**10],
            [20.25, 20.31, 19.99],
        ),
        (
            "010200038094ebdc03636064646060f8c5c0f09681219081a18881a18d81418281c1c484c1d818055d"
            "befcc17eff7f00",
            [T0, T0 + 10**9, T0 + 3 * 10**9],
            [0.1 + 0.2, -0.0, float("inf")],
        ),
        (
            "010300020163606460f8c5f0962190a188a18d418261d2a2fcbc0300",
            [T0, T0 + 1],
            ["on", None],
        ),
        (
            "01040103016360ffcdc0f0ff17c3ffb70cff0319fe1731fc6f63f82fc1f0ff04ab28501c133132300200",
            [T0, T0 + 7, T0 + 9],
            [20, 20.5, -3],
        ),
    ],
)
def test_version_1_blocks_stay_readable(hex_block: str, ts: list[int], values: list[Any]) -> None:
    data = bytes.fromhex(hex_block)
    assert blocks.decode(data)[0] == ts
    assert _bits(blocks.decode(data)[1]) == _bits(values)
    assert blocks.encode_deflate(ts, values) == data  # version 1 still writes the same bytes


@pytest.mark.parametrize("encode", [blocks.encode, blocks.encode_deflate])
def test_single_reading(encode: Any) -> None:
    assert blocks.decode(encode([7], ["x"])) == ([7], ["x"])
    assert blocks.decode(encode([2**63 - 1], [1.5])) == ([2**63 - 1], [1.5])
    assert blocks.decode(encode([2**63 - 1], [3])) == ([2**63 - 1], [3])


@pytest.mark.parametrize(
    ("ts", "values"),
    [([], []), ([1, 2], [1]), ([2, 1], [1, 1]), ([1, 1], [1, 1])],
)
def test_encode_rejects_bad_columns(ts: list[int], values: list[object]) -> None:
    with pytest.raises(ValueError):
        blocks.encode(ts, values)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        blocks.encode_deflate(ts, values)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        blocks.encode_plain(ts, values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x04\x00\x00\x01\x00",  # unknown version
        b"\x03\x00\x00\x01\x00",  # version 3, checksum wrong
        b"\x02",  # plain, nothing after the version
        b"\x02\x92\x91\x01\x90",  # plain, 1 timestamp and no value
        b"\x02\x92\x90\x90",  # plain, empty
        b"\x02\x92\x91\x01\x91\x01\x00",  # plain, trailing bytes
        b"\x01\x00\x00\x05garbage",  # not DEFLATE
        b"\x01\x09\x00",  # too short
        bytes.fromhex("0103000101636080808300"),  # generic, 0xc1 is no msgpack
    ],
)
def test_decode_rejects_foreign_bytes(data: bytes) -> None:
    with pytest.raises(blocks.BlockFormatError):
        blocks.decode(data)


def test_decode_rejects_unknown_codec() -> None:
    packed = bytearray(blocks.encode_deflate([1, 2], [1, 2]))
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
    packed = blocks.encode_deflate(ts, [1] * 360)
    assert blocks.decode(packed)[0] == ts
    ns_jitter = [t + (i * 104729) % 997 for i, t in enumerate(ts)]  # sub-ms noise: no unit
    assert len(packed) < 0.6 * len(blocks.encode_deflate(ns_jitter, [1] * 360))
