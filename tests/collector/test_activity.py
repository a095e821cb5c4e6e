"""The compactor waits for windows that still receive readings (collector.storage.sqlite.activity):
a backlog replayed into long-closed windows is compacted once, when it has arrived."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from collector.storage.sqlite import compactor, scan
from collector.storage.sqlite.activity import Activity
from tests.collector.test_compactor import WINDOW, head_count, insert, open_db, population

S = 10**9
MERGE = 10 * WINDOW
TWO_LEVEL = compactor.CompactionConfig(
    window_ns=WINDOW, grace_ns=0, max_rows=10_000, merge_ns=MERGE, merge_grace_ns=0
)
FAR_FUTURE = 10_000 * WINDOW  # every window closed by the clock


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_activity(clock: Clock) -> Activity:
    return Activity(
        WINDOW, MERGE, quiet_s=5, max_wait_s=60, merge_quiet_s=30, merge_max_wait_s=600,
        clock=clock,
    )  # fmt: skip


def test_a_window_settles_after_quiet_or_max_wait() -> None:
    clock = Clock()
    act = make_activity(clock)
    assert act.window_settled(0) and act.merge_settled(0)  # never seen: settled
    act.note([10 * S, 70 * S])  # windows 0 and 1
    assert not act.window_settled(0) and not act.window_settled(WINDOW)
    assert act.window_settled(2 * WINDOW)
    clock.now += 4.9
    assert not act.window_settled(0)
    clock.now += 0.1
    assert act.window_settled(0)
    assert not act.merge_settled(0)  # the merge window waits longer
    # A window that keeps receiving readings still moves after max_wait_s.
    while clock.now + 4 < 1060:  # a reading every 4 s; the window's first came at 1000
        act.note([WINDOW + 2])
        clock.now += 4.0
        assert not act.window_settled(WINDOW)
    clock.now = 1060.0
    assert act.window_settled(WINDOW)
    act.compacted(WINDOW)  # compacted: the next reading starts a new wait
    act.note([WINDOW + 3])
    assert not act.window_settled(WINDOW)


def test_a_batch_spanning_many_windows_notes_only_its_windows() -> None:
    clock = Clock()
    act = make_activity(clock)
    act.note([0, 500 * WINDOW])  # far apart: noted one by one, not as a range
    assert not act.window_settled(0) and not act.window_settled(500 * WINDOW)
    assert act.window_settled(250 * WINDOW)
    assert len(act) == 4  # two windows, two merge windows
    clock.now += 30
    act.prune()
    assert len(act) == 0


def compact_all(conn: sqlite3.Connection, act: Activity) -> int:
    steps = 0
    while compactor.compact_once(conn, FAR_FUTURE, TWO_LEVEL, act):
        steps += 1
        assert steps < 10_000
    return steps


def block_windows(conn: sqlite3.Connection) -> list[tuple[int, int]]:
    return conn.execute("SELECT DISTINCT start_ns, end_ns FROM blocks ORDER BY 1").fetchall()


def test_compaction_waits_for_filling_windows_then_merges_a_settled_hour(
    tmp_path: Path,
) -> None:
    clock = Clock()
    act = make_activity(clock)
    conn = open_db(tmp_path / "t.db", 4)
    rows = population(4, 3, seed=21)  # windows 0, 1, 2: all long closed by the clock
    first = [r for r in rows if r[1] < WINDOW]
    insert(conn, first)
    act.note([ts for _, ts, _ in first])
    clock.now += 10  # window 0 arrived a while ago; windows 1 and 2 are arriving now
    newer = [r for r in rows if r[1] >= WINDOW]
    insert(conn, newer)
    act.note([ts for _, ts, _ in newer])
    compact_all(conn, act)
    assert block_windows(conn) == [(0, WINDOW)]  # the hour is busy: not merged
    assert head_count(conn) == len(newer)
    # More readings for window 1 while it waits: it is still compacted once, whole.
    clock.now += 4
    more = [(sid, WINDOW + 5 * S + sid, 1.5) for sid in range(1, 5)]
    insert(conn, more)
    act.note([ts for _, ts, _ in more])
    clock.now += 2  # window 2 settled, window 1 not (its last reading was 2 s ago)
    compact_all(conn, act)
    assert block_windows(conn) == [(0, WINDOW), (2 * WINDOW, 3 * WINDOW)]
    assert head_count(conn) == len([r for r in newer if r[1] < 2 * WINDOW]) + len(more)
    clock.now += 5
    compact_all(conn, act)
    assert head_count(conn) == 0
    assert block_windows(conn) == [(w * WINDOW, (w + 1) * WINDOW) for w in range(3)]
    assert conn.execute("SELECT count(*) FROM blocks").fetchone() == (12,)
    clock.now += 30  # the hour is quiet now: merged into one block per series
    compact_all(conn, act)
    assert block_windows(conn) == [(0, MERGE)]
    got = list(scan.read_range(conn, range(1, 5), None, None))
    assert got == sorted(rows + more, key=lambda r: (r[1], r[0]))


def test_the_hour_merges_after_max_wait_even_if_it_keeps_receiving(tmp_path: Path) -> None:
    clock = Clock()
    act = make_activity(clock)
    conn = open_db(tmp_path / "t.db", 2)
    rows = population(2, 2, seed=22)
    insert(conn, rows)
    act.note([ts for _, ts, _ in rows])
    for minute in range(2, 10):  # a trickle into the hour, one window a minute
        clock.now += 60
        late = [(1, minute * WINDOW + 1, float(minute))]
        insert(conn, late)
        act.note([late[0][1]])
        rows += late
        compact_all(conn, act)
    assert clock.now - 1000.0 >= 480
    assert (0, MERGE) not in block_windows(conn)
    clock.now += 130  # 610 s after the hour's first reading: merged despite the trickle
    late = [(2, 9 * WINDOW + 2, 9.5)]
    insert(conn, late)
    act.note([late[0][1]])
    rows += late
    clock.now += 6  # the window itself settles; the hour has waited long enough
    compact_all(conn, act)
    assert block_windows(conn) == [(0, MERGE)]
    got = list(scan.read_range(conn, [1, 2], None, None))
    assert got == sorted(rows, key=lambda r: (r[1], r[0]))
