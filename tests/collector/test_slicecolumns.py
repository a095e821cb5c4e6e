"""What a direct merge window holds between reading the head and writing the final blocks
(collector.storage.sqlite.slicecolumns): each series' readings exactly as stored, in order,
with every value's Python type; one numpy column only where a block made from it is the
same block the lists give."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.storage.sqlite import blocks as codec
from collector.storage.sqlite import numeric_blocks
from collector.storage.sqlite.blockwrites import block_row, column_block_row
from collector.storage.sqlite.slicecolumns import SeriesReadings, SliceColumns

Row = tuple[int, int, codec.Value]


def _gather(slices: list[list[Row]]) -> dict[int, SeriesReadings]:
    """Each series' readings over the slices, as directmerge gathers them."""
    series: dict[int, SeriesReadings] = {}
    for rows in slices:
        part = SliceColumns(rows)
        for k, sid in enumerate(part.sids):
            series.setdefault(sid, SeriesReadings()).add(part, k)
    return series


def _expected(slices: list[list[Row]]) -> dict[int, tuple[list[int], list[codec.Value]]]:
    out: dict[int, tuple[list[int], list[codec.Value]]] = {}
    for rows in slices:
        for sid, ts, value in rows:
            held = out.setdefault(sid, ([], []))
            held[0].append(ts)
            held[1].append(value)
    return out


def _head_order(rows: Sequence[Row]) -> list[Row]:
    """Rows as the head returns them: by (ts, series_id)."""
    return sorted(rows, key=lambda r: (r[1], r[0]))


def _check(slices: list[list[Row]]) -> dict[int, SeriesReadings]:
    series = _gather(slices)
    want = _expected(slices)
    assert sorted(series) == sorted(want)
    for sid, (ts, values) in want.items():
        held = series[sid]
        assert len(held) == len(ts)
        assert held.timestamps().tolist() == ts
        got = held.values()
        assert got == values
        assert [type(v) for v in got] == [type(v) for v in values]
        column = held.column()
        if column is not None:
            assert column.tolist() == values
            assert [type(v) for v in column.tolist()] == [type(v) for v in values]
    return series


def test_int_and_float_series_become_one_numpy_column_each() -> None:
    first = _head_order([(1, t, 20.5 + t) for t in range(3)] + [(2, t, 7 * t) for t in range(3)])
    second = _head_order([(1, t, 0.25) for t in (5, 6)] + [(2, 9, -(2**63))])
    series = _check([first, second])
    floats, ints = series[1].column(), series[2].column()
    assert floats is not None and floats.dtype == np.float64
    assert ints is not None and ints.dtype == np.int64
    assert ints.tolist() == [0, 7, 14, -(2**63)]


def test_a_series_of_ints_and_floats_keeps_each_type_and_takes_the_list_path() -> None:
    rows = _head_order([(1, 1, 21), (1, 2, 21.5), (1, 3, 22), (2, 1, 1.0), (2, 2, 2.0)])
    series = _check([rows])
    assert series[1].column() is None
    assert series[1].values() == [21, 21.5, 22]
    assert [type(v) for v in series[1].values()] == [int, float, int]
    assert series[2].column() is not None  # the other series of the slice is all floats


def test_a_series_int_in_one_slice_and_float_in_the_next_takes_the_list_path() -> None:
    series = _check([[(1, 1, 5), (1, 2, 6)], [(1, 3, 6.5)]])
    assert series[1].column() is None


def test_text_none_and_ints_beyond_int64_are_kept_whole() -> None:
    rows = _head_order(
        [(1, 1, "on"), (1, 2, None), (2, 1, 2**70), (2, 2, 5), (3, 1, 1.5), (3, 2, 2.5)]
    )
    series = _check([rows])
    assert all(series[sid].column() is None for sid in (1, 2, 3))


def test_ints_beyond_a_floats_exact_range_stay_exact_beside_floats() -> None:
    big = 2**53 + 1  # a float64 cannot hold it
    rows = _head_order([(1, 1, big), (1, 2, -big), (2, 1, 0.5)])
    series = _check([rows])
    assert series[1].values() == [big, -big]
    column = series[1].column()
    assert column is not None and column.tolist() == [big, -big]


def test_rows_gives_every_reading_of_the_slice_for_an_exact_delete() -> None:
    rows = _head_order([(sid, t, float(t)) for sid in (3, 1, 2) for t in range(4)])
    assert sorted(SliceColumns(rows).rows()) == sorted((ts, sid) for sid, ts, _ in rows)


_values = st.one_of(
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([None, "on", "off"]),
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.integers(1, 6), st.integers(0, 40), _values), max_size=40),
        min_size=1,
        max_size=4,
    )
)
def test_any_rows_come_back_per_series_exactly(raw: list[list[Row]]) -> None:
    # Slices as the head gives them: unique (series, ts), later slices later in time.
    slices: list[list[Row]] = []
    for i, rows in enumerate(raw):
        unique = {(sid, ts + 100 * i): v for sid, ts, v in rows}
        slices.append(_head_order([(sid, ts, v) for (sid, ts), v in unique.items()]))
    _check([s for s in slices if s])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 10**9), min_size=1, max_size=300, unique=True),
    st.data(),
)
def test_a_block_from_a_column_is_the_block_from_lists(
    gaps: list[int], data: st.DataObject
) -> None:
    ts: list[int] = np.cumsum(gaps).tolist()
    ints = data.draw(st.booleans())
    values: list[codec.Value]
    column: numeric_blocks.Int64s | numeric_blocks.Float64s
    if ints:
        values = data.draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=len(ts),
                                    max_size=len(ts)))  # fmt: skip
        column = np.array(values, dtype=np.int64)
    else:
        scale = data.draw(st.sampled_from([None, 1, 2]))
        floats = data.draw(st.lists(st.floats(-1e12, 1e12), min_size=len(ts),
                                    max_size=len(ts)))  # fmt: skip
        if scale is not None:  # sensor-like: quantised
            floats = [round(v, scale) for v in floats]
        values = list(floats)
        column = np.array(values, dtype=np.float64)
    tcol = np.array(ts, dtype=np.int64)
    assert numeric_blocks.encode_column(tcol, column) == numeric_blocks.encode(ts, values)
    assert column_block_row(7, 0, 10, tcol, column) == block_row(7, 0, 10, ts, values)


def test_regular_sensor_columns_give_the_same_rows_either_way() -> None:
    rnd = random.Random(5)
    ts = [1_000 + 10 * i for i in range(360)]
    temps = [round(20 + rnd.random(), 2) for _ in ts]
    counts = list(range(0, 3_600, 10))
    columns: list[tuple[list[codec.Value], numeric_blocks.Int64s | numeric_blocks.Float64s]] = [
        (list(temps), np.array(temps, dtype=np.float64)),
        (list(counts), np.array(counts, dtype=np.int64)),
    ]
    for values, column in columns:
        row = column_block_row(1, 0, 3_600, np.array(ts, dtype=np.int64), column)
        assert row == block_row(1, 0, 3_600, ts, values)
        decoded = codec.decode(row[-1])  # type: ignore[arg-type]
        assert decoded == (ts, values)
