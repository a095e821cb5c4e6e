"""The in-memory columns a direct merge window keeps per series between reading and writing
(collector.storage.sqlite.directmerge._Column): compact while the values allow, exact always."""

from __future__ import annotations

from array import array

from collector.storage.sqlite.directmerge import _Column


def test_floats_and_ints_wait_in_arrays() -> None:
    floats, ints = _Column(), _Column()
    floats.extend([1, 2], [1.5, 2.5])
    floats.extend([3], [4.25])
    ints.extend([1, 2], [7, -(2**63)])
    assert isinstance(floats.values, array) and floats.values.typecode == "d"
    assert isinstance(ints.values, array) and ints.values.typecode == "q"
    assert (floats.values.tolist(), ints.values.tolist()) == ([1.5, 2.5, 4.25], [7, -(2**63)])
    assert floats.ts.tolist() == [1, 2, 3]


def test_a_value_of_another_type_turns_the_column_into_a_list_keeping_every_type() -> None:
    col = _Column()
    col.extend([1, 2], [1.5, 2.5])
    col.extend([3, 4], [4, None])  # an int among floats, then None
    col.extend([5], ["on"])
    assert col.values == [1.5, 2.5, 4, None, "on"]
    assert [type(v) for v in col.values] == [float, float, int, type(None), str]


def test_an_int_beyond_int64_is_kept_whole() -> None:
    col = _Column()
    col.extend([1, 2], [5, 6])
    col.extend([3, 4, 5], [7, 2**70, 8])  # the array's extend stops at 2**70
    assert col.values == [5, 6, 7, 2**70, 8]
    assert col.ts.tolist() == [1, 2, 3, 4, 5]
