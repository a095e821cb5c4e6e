"""A slice of head rows as columns sorted by series, and one series' readings gathered from
such slices: how a direct merge window (collector.storage.sqlite.directmerge) holds what it
read until it writes the final blocks.

Why columns: the rows come out of the head in (ts, series_id) order, and every step that
touches their Python objects in another order waits on memory (the objects lie where the
fetch made them). Sorting the row tuples by series and cutting them into per-series lists
measured 0.65 µs per reading, where taking the three columns apart in fetch order, turning
them into numpy arrays there and sorting the arrays takes ~0.15 (docs/benchmarks-history.md,
"The whole 20M run under 4 µs per reading").

A slice keeps, per reading, an int64 timestamp and the value as 8 bytes: an int64 for an
int, the float64's bits for a float, with a mask of which is which when the slice holds
both. A slice with any other value (text, None, an int beyond int64) keeps its values as
a list instead. Values keep their exact Python type either way.

Pure: no I/O, no SQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import compress, repeat
from operator import is_, itemgetter
from typing import Final, TypeAlias

import numpy as np
import numpy.typing as npt

from collector.storage.sqlite import blocks as codec
from collector.storage.sqlite.numeric_blocks import Float64s, Int64s

Bools: TypeAlias = npt.NDArray[np.bool_]

_INT_FLOAT: Final = frozenset({int, float})
_COLUMNS: Final = tuple(itemgetter(i) for i in range(3))
INTS: Final = 1
FLOATS: Final = 0
MIXED: Final = -1
# Ints below this in magnitude are exact as float64s.
_EXACT: Final = 2**53


class SliceColumns:
    """Head rows (series_id, ts, value) of one read slice, sorted by series (each series'
    readings in the order read, which is timestamp order)."""

    __slots__ = ("bits", "bounds", "is_int", "kinds", "objects", "sids", "ts")

    def __init__(self, rows: Sequence[tuple[int, int, codec.Value]]) -> None:
        n = len(rows)
        sid_list, ts_list, values = (list(map(get, rows)) for get in _COLUMNS)
        sids = np.array(sid_list, dtype=np.int64)
        order = np.argsort(sids, kind="stable")
        sorted_sids = sids[order]
        starts = np.flatnonzero(sorted_sids[1:] != sorted_sids[:-1]) + 1
        # Series k's readings are [bounds[k], bounds[k + 1]).
        self.bounds: list[int] = [0, *starts.tolist(), n] if n else [0]
        self.sids: list[int] = sorted_sids[self.bounds[:-1]].tolist() if n else []
        self.ts: Int64s = np.array(ts_list, dtype=np.int64)[order]
        # The values: `bits` (int64 words; `is_int` where the ints are, a bool when all or
        # none are) or `objects` (the slice holds other values).
        self.bits: Int64s | None = None
        self.is_int: Bools | bool | None = None
        self.objects: list[codec.Value] | None = None
        # Per series: INTS, FLOATS or MIXED (ints and floats, or other values).
        self.kinds: list[int]
        numbers = _numbers(values)
        if numbers is None:
            self.objects = list(map(values.__getitem__, order.tolist()))
            self.kinds = [MIXED] * len(self.sids)
            return
        bits, is_int = numbers
        self.bits = bits[order]
        if isinstance(is_int, bool):
            self.is_int = is_int
            self.kinds = [INTS if is_int else FLOATS] * len(self.sids)
            return
        self.is_int = is_int[order]
        # Ints per series against its readings: all, none or some.
        ints = np.add.reduceat(self.is_int, self.bounds[:-1], dtype=np.int64)
        sizes = np.diff(self.bounds)
        self.kinds = np.where(ints == sizes, INTS, np.where(ints == 0, FLOATS, MIXED)).tolist()

    def __len__(self) -> int:
        return len(self.ts)

    def rows(self) -> list[tuple[int, int]]:
        """(ts, series_id) of every reading of the slice."""
        sids = np.repeat(np.array(self.sids, dtype=np.int64), np.diff(self.bounds))
        return list(zip(self.ts.tolist(), sids.tolist(), strict=True))


def _numbers(values: list[codec.Value]) -> tuple[Int64s, Bools | bool] | None:
    """The values as int64 words (ints as themselves, floats as their float64 bits) and
    where the ints are (a bool when all or none are); None unless every value is an int
    that fits int64 or a float."""
    types = list(map(type, values))
    kinds = set(types)
    if not kinds <= _INT_FLOAT:
        return None
    try:
        if kinds == {float}:
            return np.array(values, dtype=np.float64).view(np.int64), False
        if kinds == {int}:
            return np.array(values, dtype=np.int64), True
    except OverflowError:  # an int beyond int64
        return None
    is_int = np.fromiter(map(is_, types, repeat(int)), dtype=np.bool_, count=len(types))
    floats = np.array(values, dtype=np.float64)
    as_floats = floats[is_int]
    if len(as_floats) and np.abs(as_floats).max() >= _EXACT:
        try:  # ints too large for a float to hold them exactly
            ints = np.array(list(compress(values, is_int.tolist())), dtype=np.int64)
        except OverflowError:
            return None
    else:
        ints = as_floats.astype(np.int64)
    bits = floats.view(np.int64)  # the ints' words are replaced
    bits[is_int] = ints
    return bits, is_int


class SeriesReadings:
    """One series' readings gathered from the slices it appears in, in slice order."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        # (slice, k): the series is the slice's k-th.
        self.parts: list[tuple[SliceColumns, int]] = []

    def add(self, part: SliceColumns, k: int) -> None:
        self.parts.append((part, k))

    def __len__(self) -> int:
        return sum(p.bounds[k + 1] - p.bounds[k] for p, k in self.parts)

    def timestamps(self) -> Int64s:
        return _join([p.ts[p.bounds[k] : p.bounds[k + 1]] for p, k in self.parts])

    def column(self) -> Int64s | Float64s | None:
        """The values as one int64 array (all ints) or float64 array (all floats), or None
        when they are of mixed or other types (`values` then)."""
        kinds = {p.kinds[k] for p, k in self.parts}
        if len(kinds) != 1 or MIXED in kinds:
            return None
        words = [p.bits[p.bounds[k] : p.bounds[k + 1]] for p, k in self.parts]  # type: ignore[index]  # numbers: bits is set
        joined = _join(words)
        return joined if kinds.pop() == INTS else joined.view(np.float64)

    def values(self) -> list[codec.Value]:
        """The values as Python objects of their stored types."""
        out: list[codec.Value] = []
        for p, k in self.parts:
            a, b = p.bounds[k], p.bounds[k + 1]
            if p.objects is not None:
                out += p.objects[a:b]
                continue
            assert p.bits is not None
            words = p.bits[a:b]
            if isinstance(p.is_int, bool):
                out += (words if p.is_int else words.view(np.float64)).tolist()
                continue
            mask = p.is_int[a:b]  # type: ignore[index]  # an array here
            ints, floats = words.tolist(), words.view(np.float64).tolist()
            out += [i if m else f for i, f, m in zip(ints, floats, mask.tolist(), strict=True)]
        return out


def _join(arrays: list[Int64s]) -> Int64s:
    """One array of a series' pieces (at least one: a series is added with its first)."""
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
