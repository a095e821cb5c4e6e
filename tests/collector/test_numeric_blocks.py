"""Version-3 blocks (numeric columns through pcodec): exact round trips of any numeric
column, damaged bytes refused with BlockFormatError and nothing else, the value kinds,
and databases holding version-1 blocks read and rewritten correctly."""

from __future__ import annotations

import itertools
import random
import sqlite3
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from collector.storage.sqlite import blocks, compactor, numeric_blocks, scan, store

INT64 = st.integers(-(2**63), 2**63 - 1)
EXACT_INT = st.integers(-(2**53), 2**53)
# Every float64 bit pattern: all NaN payloads, both zeros, subnormals, infinities.
ANY_FLOAT = st.integers(0, 2**64 - 1).map(lambda b: struct.unpack("<d", b.to_bytes(8, "little"))[0])
FLOAT = st.one_of(st.floats(width=64), ANY_FLOAT)
DECIMAL = st.builds(lambda n, k: n / 10**k, st.integers(-(10**9), 10**9), st.integers(0, 4))
INTEGRAL_FLOAT = st.integers(-(2**53), 2**53).map(float)
T0 = 1_767_225_600 * 10**9


def _bits(values: Sequence[object]) -> list[object]:
    # Floats compared by type and bits: -0.0 is not 0.0, 21.0 is not 21, NaNs keep payloads.
    return [(type(v), struct.pack("<d", v)) if type(v) is float else (type(v), v) for v in values]


@st.composite
def timestamps(draw: st.DrawFn, n: int) -> list[int]:
    """n strictly increasing int64 timestamps: on a schedule, jittered, or anywhere (a
    block spans at most a day; spans beyond int64 are refused by every version)."""
    shape = draw(st.sampled_from(["regular", "jitter", "any"]))
    if shape == "any":
        return sorted(draw(st.sets(st.integers(-(2**62), 2**62 - 1), min_size=n, max_size=n)))
    t0 = draw(st.integers(-(2**62), 2**62))
    step = draw(st.integers(1, 10**10))
    if shape == "regular":
        return [t0 + i * step for i in range(n)]
    jitter = draw(st.lists(st.integers(0, step - 1), min_size=n, max_size=n))
    return [t0 + i * step + j for i, j in enumerate(jitter)]


@st.composite
def numeric_columns(draw: st.DrawFn) -> tuple[list[int], list[int | float]]:
    kind = draw(st.sampled_from(["int", "float", "decimal", "number", "js-client", "walk"]))
    n = draw(st.integers(1, 400))
    ts = draw(timestamps(n))
    values: list[int | float]
    if kind == "walk":  # a quantised sensor: a random walk in steps of 10**-k
        k = draw(st.integers(0, 3))
        start = draw(st.integers(-(10**6), 10**6))
        steps = draw(st.lists(st.integers(-3, 3), min_size=n, max_size=n))
        walk = [start + sum(steps[: i + 1]) for i in range(n)]
        return ts, [round(w / 10**k, k) for w in walk]
    element = {
        "int": INT64,
        "float": FLOAT,
        "decimal": DECIMAL,
        "number": st.one_of(EXACT_INT, FLOAT, DECIMAL, INTEGRAL_FLOAT),
        # What a JavaScript client sends: integral values as ints, the rest as floats.
        "js-client": DECIMAL.map(lambda v: int(v) if v.is_integer() else v),
    }[kind]
    values = draw(st.lists(element, min_size=n, max_size=n))
    return ts, values


@given(numeric_columns())
@example(([1, 2, 3, 4], [float("nan"), -0.0, 0.0, float("inf")]))
@example(([1, 2, 3, 4], [21, 21.0, -0.0, 0]))
@example(([-(2**62), 2**62 - 1], [-(2**63), 2**63 - 1]))
@example(([2**63 - 2, 2**63 - 1], [0.5, 1]))
@example(([5], [2**53]))
@example(([1, 2, 3], [1e300, 2**53, -(2**53)]))
def test_any_numeric_column_round_trips_exactly(column: tuple[list[int], list[Any]]) -> None:
    ts, values = column
    packed = blocks.encode(ts, values)
    assert packed[0] == blocks.PCO_VERSION
    ts2, values2 = blocks.decode(packed)
    assert ts2 == ts
    assert _bits(values2) == _bits(values)


def _recrc(body: bytes) -> bytes:
    return body + zlib.crc32(body).to_bytes(4, "little")


@given(numeric_columns(), st.data())
def test_damaged_blocks_are_refused_with_the_codecs_error(
    column: tuple[list[int], list[Any]], data: st.DataObject
) -> None:
    packed = blocks.encode(*column)
    pos = data.draw(st.integers(0, len(packed) - 1))
    flip = data.draw(st.integers(1, 255))
    damaged = bytearray(packed)
    damaged[pos] ^= flip
    with pytest.raises(blocks.BlockFormatError):
        blocks.decode(bytes(damaged))  # the CRC catches any damage of up to 32 bits
    cut = data.draw(st.integers(0, len(packed) - 1))
    with pytest.raises(blocks.BlockFormatError):
        blocks.decode(packed[:cut])


@given(numeric_columns(), st.data())
def test_any_body_behind_a_valid_checksum_decodes_or_is_refused(
    column: tuple[list[int], list[Any]], data: st.DataObject
) -> None:
    """What pcodec and the parser see when the CRC is right but the bytes are not ours:
    a well-formed answer or BlockFormatError, never another exception."""
    body = bytearray(blocks.encode(*column)[:-4])
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["set", "cut", "insert"]))
        pos = data.draw(st.integers(1, len(body)))  # byte 0 stays the version
        if op == "set" and pos < len(body):
            body[pos] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del body[pos:]
        else:
            body[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    try:
        ts, values = blocks.decode(_recrc(bytes(body)))
    except blocks.BlockFormatError:
        return
    assert 1 <= len(ts) == len(values) <= numeric_blocks.MAX_READINGS
    assert all(a < b for a, b in itertools.pairwise(ts))
    assert {type(v) for v in values} <= {int, float}


@given(st.binary(max_size=200))
def test_random_bytes_are_refused(tail: bytes) -> None:
    for body in (b"\x03" + tail, _recrc(b"\x03" + tail)):
        try:
            ts, values = blocks.decode(body)
        except blocks.BlockFormatError:
            continue
        assert 1 <= len(ts) == len(values)


@pytest.mark.parametrize(
    ("values", "kind", "scale"),
    [
        ([5, 7, -3, 2**62], numeric_blocks.INT, 0),
        ([0.1 + 0.2, 1 / 3, -0.0, float("nan")], numeric_blocks.FLOAT, 0),
        ([20.25, 20.31, 19.99, 21.0], numeric_blocks.FLOAT_DECIMAL, 2),
        ([20, 20.5, 21, -3.25], numeric_blocks.NUMBER_DECIMAL, 2),
        ([20, 0.1 + 0.2, 21, 1.0], numeric_blocks.NUMBER, 0),
    ],
)
def test_value_kind(values: list[Any], kind: int, scale: int) -> None:
    packed = blocks.encode([10, 20, 30, 45], values)
    assert (packed[0], packed[1], packed[2]) == (numeric_blocks.VERSION, kind, scale)
    assert _bits(blocks.decode(packed)[1]) == _bits(values)


def test_a_clients_integral_values_cost_no_type_marks() -> None:
    # A JavaScript client sends 21 for 21.0: the rule "int where integral" needs no marks.
    rnd = random.Random(5)
    ts = [T0 + i * 10**10 for i in range(360)]
    walk = [round(21 + rnd.randrange(-40, 40) / 10, 1) for _ in range(360)]
    mixed: list[int | float] = [int(v) if v.is_integer() else v for v in walk]
    assert {type(v) for v in mixed} == {int, float}
    packed = blocks.encode(ts, mixed)
    assert packed[1] == numeric_blocks.NUMBER_DECIMAL
    assert abs(len(packed) - len(blocks.encode(ts, walk))) <= 1  # one varint: no marks
    assert _bits(blocks.decode(packed)[1]) == _bits(mixed)


def _sensor_day(seed: int) -> list[tuple[list[int], list[Any]]]:
    """An hour of eight sensors of one device every 10 s, shaped like bench/load.py."""
    rnd = random.Random(seed)
    ts = [T0 + i * 10**10 for i in range(360)]
    temp, hum, count, co2 = 21.0, 50.0, 0, 420
    cols: list[list[Any]] = [[] for _ in range(5)]
    for _ in ts:
        temp += (rnd.random() - 0.5) * 0.05
        hum += (rnd.random() - 0.5) * 0.3
        count += rnd.randrange(10)
        co2 = max(0, co2 + rnd.randrange(-3, 4))
        row = [round(temp, 2), round(hum, 1), count, co2, round(3.3 + rnd.random() * 0.02, 3)]
        for col, v in zip(cols, row, strict=True):
            col.append(v)
    return [(ts, col) for col in cols]


def test_sensor_columns_are_smaller_than_version_1() -> None:
    new_total = old_total = 0
    for ts, values in _sensor_day(7):
        new, old = blocks.encode(ts, values), blocks.encode_deflate(ts, values)
        assert new[0] == blocks.PCO_VERSION
        assert len(new) < 0.9 * len(old), (values[:3], len(new), len(old))
        assert blocks.decode(new) == (ts, values)
        new_total += len(new)
        old_total += len(old)
    assert new_total < 0.65 * old_total  # measured 0.59: quantised floats about half


def test_jittered_timestamps_round_trip_and_pack() -> None:
    rnd = random.Random(9)
    ts = [T0 + i * 10**10 + rnd.randrange(10**6) for i in range(360)]  # +/- 1 ms of ns noise
    packed = blocks.encode(ts, [1] * 360)
    assert packed[0] == blocks.PCO_VERSION
    assert blocks.decode(packed)[0] == ts
    assert len(packed) < len(blocks.encode_deflate(ts, [1] * 360))


# --- databases written before version 3 -----------------------------------------------

S = 10**9
MINUTE = 60 * S
CONFIG = compactor.CompactionConfig(
    window_ns=MINUTE, grace_ns=5 * S, max_rows=10_000, merge_ns=10 * MINUTE, run_windows=1
)


def _db(path: Path) -> sqlite3.Connection:
    store.migrate(path)
    conn = store.connect(path)
    conn.execute("INSERT INTO devices (id, name, token_hash, created_ns) VALUES (1, 'd', 'x', 0)")
    conn.executemany(
        "INSERT INTO series (id, device_id, sensor, kind) VALUES (?, 1, ?, 'number')",
        [(sid, f"s{sid}") for sid in range(1, 5)],
    )
    return conn


def _insert(conn: sqlite3.Connection, rows: list[tuple[int, int, Any]]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT OR IGNORE INTO readings_head (ts, series_id, value) VALUES (?, ?, ?)", rows
    )
    conn.execute("COMMIT")


def _drain(conn: sqlite3.Connection, now: int) -> None:
    for _ in range(10_000):
        if not compactor.compact_once(conn, now, CONFIG):
            return
    raise AssertionError("compaction did not finish")


def _rows(rows: Sequence[tuple[int, int, Any]]) -> list[object]:
    return [(sid, ts, *_bits([v])) for sid, ts, v in rows]


def _versions(conn: sqlite3.Connection) -> dict[int, int]:
    return dict(conn.execute("SELECT series_id, unicode(substr(data, 1, 1)) FROM blocks"))


def test_a_database_of_version_1_blocks_is_read_and_rewritten_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rnd = random.Random(3)
    values: dict[int, list[Any]] = {
        1: [round(rnd.uniform(-40, 40), 2) for _ in range(60)],  # decimal floats
        2: [rnd.randrange(-1000, 1000) for _ in range(60)],  # ints
        3: [rnd.choice([21, 21.5, 22.0, -0.0, 0.1 + 0.2]) for _ in range(60)],  # mixed
        4: [rnd.choice(["on", "off", None]) for _ in range(60)],  # text stays version 1
    }
    rows = [(i * 10 * S, sid, v) for sid, vs in values.items() for i, v in enumerate(vs)]
    conn = _db(tmp_path / "t.db")
    _insert(conn, rows)
    # Compact with the encoder of the version-1 collector: its merged blocks are what an
    # existing database holds.
    monkeypatch.setattr(blocks, "encode", blocks.encode_deflate)
    _drain(conn, 30 * MINUTE)
    monkeypatch.undo()
    assert _versions(conn) == {1: 1, 2: 1, 3: 1, 4: 1}
    expected = sorted(((sid, ts, v) for ts, sid, v in rows), key=lambda r: (r[1], r[0]))
    assert _rows(list(scan.read_range(conn, [1, 2, 3, 4], None, None))) == _rows(expected)
    # A late reading rewrites each numeric block in version 3, every old reading intact.
    late = [(5, sid, 7) for sid in (1, 2, 3)] + [(5, 4, "late")]
    _insert(conn, late)
    _drain(conn, 60 * MINUTE)
    assert _versions(conn) == {1: 3, 2: 3, 3: 3, 4: 1}
    expected = sorted(((sid, ts, v) for ts, sid, v in rows + late), key=lambda r: (r[1], r[0]))
    got = list(scan.read_range(conn, [1, 2, 3, 4], None, None))
    assert _rows(got) == _rows(expected)
    summaries = conn.execute(
        "SELECT series_id, count, min, max, sum FROM blocks WHERE series_id = 2"
    ).fetchone()
    ints = [*values[2], 7]
    assert summaries == (2, 61, min(ints), max(ints), sum(ints))
