"""The per-series stats a write transaction folds from its rows (first and last timestamp,
the newest value, the count): folding a run of one series' rows at a time, as series groups
come, gives what folding row by row gives."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from collector.storage.sqlite.batchstore import _accumulate

Stats = dict[int, list[object]]


def _row_by_row(sids: list[int], tss: list[int], values: list[object]) -> Stats:
    stats: Stats = {}
    _accumulate(stats, sids, tss, values, [True] * len(sids))  # a mask: the row loop
    return stats


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 4),
            st.lists(st.tuples(st.integers(0, 20), st.integers(0, 9)), min_size=1, max_size=8),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_runs_fold_to_what_rows_fold_to(groups: list[tuple[int, list[tuple[int, int]]]]) -> None:
    sids = [sid for sid, rows in groups for _ in rows]
    tss = [ts for _, rows in groups for ts, _ in rows]
    values: list[object] = [v for _, rows in groups for _, v in rows]
    if len(sids) > 1:  # the run path is taken when the first two rows share a series
        sids[1] = sids[0]
    folded: Stats = {1: [5, 7, 3, 2]}  # a series already folded from an earlier batch
    _accumulate(folded, sids, tss, values, None)
    expected: Stats = {1: [5, 7, 3, 2]}
    _accumulate(expected, sids, tss, values, [True] * len(sids))
    assert folded == expected


def test_the_newest_value_is_the_last_row_at_the_newest_timestamp() -> None:
    stats: Stats = {}
    _accumulate(stats, [1, 1, 1, 1, 2, 2], [3, 9, 9, 4, 1, 2], ["a", "b", "c", "d", 7, 8], None)
    assert stats == {1: [3, 9, "c", 4], 2: [1, 2, 8, 2]}
    assert stats == _row_by_row([1, 1, 1, 1, 2, 2], [3, 9, 9, 4, 1, 2], ["a", "b", "c", "d", 7, 8])
