"""Compaction and retention on real files: bounded steps, merges, config, and SIGKILL at
random points of compaction losing or duplicating nothing."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collector.storage.sqlite import compactor, directmerge, merging, retention, scan, store
from collector.storage.sqlite.activity import Activity
from collector.storage.sqlite.blockwrites import head_block_rows

S = 10**9
WINDOW = 60 * S
CONFIG = compactor.CompactionConfig(window_ns=WINDOW, grace_ns=5 * S, max_rows=300)


def open_db(path: Path, n_series: int) -> sqlite3.Connection:
    store.migrate(path)
    conn = store.connect(path)
    conn.execute("INSERT INTO devices (id, name, token_hash, created_ns) VALUES (1, 'dev', 'x', 0)")
    conn.executemany(
        "INSERT INTO series (id, device_id, sensor, kind) VALUES (?, 1, ?, 'number')",
        [(sid, f"s{sid}") for sid in range(1, n_series + 1)],
    )
    return conn


def insert(conn: sqlite3.Connection, rows: list[tuple[int, int, Any]]) -> int:
    conn.execute("BEGIN IMMEDIATE")
    n = conn.executemany(
        "INSERT OR IGNORE INTO readings_head (ts, series_id, value) VALUES (?, ?, ?)",
        [(ts, sid, v) for sid, ts, v in rows],
    ).rowcount
    conn.execute("COMMIT")
    return n


def drain(conn: sqlite3.Connection, now: int, config: compactor.CompactionConfig = CONFIG) -> int:
    steps = 0
    while compactor.compact_once(conn, now, config):
        steps += 1
        assert steps < 100_000
    return steps


def head_count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM readings_head").fetchone()[0])


def population(n_series: int, minutes: int, seed: int) -> list[tuple[int, int, Any]]:
    rnd = random.Random(seed)
    rows = []
    for sid in range(1, n_series + 1):
        for i in range(minutes * 6):  # every 10 s
            ts = i * 10 * S + sid * 1000
            value: Any = round(rnd.uniform(-50, 50), 2) if sid % 3 else rnd.randrange(1000)
            rows.append((sid, ts, value))
    return rows


def test_only_closed_windows_move(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "t.db", 2)
    insert(conn, population(2, 5, seed=1))  # windows 0..4 minutes
    now = 3 * WINDOW + 2 * S  # windows 0 and 1 closed; 2 ends within the grace period
    drain(conn, now)
    starts = [r[0] for r in conn.execute("SELECT DISTINCT start_ns FROM blocks ORDER BY 1")]
    assert starts == [0, WINDOW]
    assert conn.execute("SELECT min(ts) FROM readings_head").fetchone()[0] >= 2 * WINDOW
    assert head_count(conn) + conn.execute("SELECT sum(count) FROM blocks").fetchone()[0] == 60


def test_each_step_is_bounded(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "t.db", 40)
    insert(conn, population(40, 10, seed=2))  # 2,400 readings in one 10-minute window
    config = compactor.CompactionConfig(window_ns=10 * WINDOW, grace_ns=0, max_rows=100)
    handled = []
    while n := compactor.compact_once(conn, 100 * WINDOW, config):
        handled.append(n)
    assert len(handled) > 3 * 2400 // 100 - 5  # stage, pack and delete, each in ~100s
    assert max(handled) <= 100 + 40  # one timestamp or one series past the bound at most
    assert head_count(conn) == 0
    assert conn.execute("SELECT count(*), sum(count) FROM blocks").fetchone() == (40, 2400)


def test_late_reading_during_compaction_is_kept_and_merged(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "t.db", 3)
    rows = population(3, 1, seed=3)
    insert(conn, rows)
    config = compactor.CompactionConfig(window_ns=WINDOW, grace_ns=0, max_rows=5)
    for _ in range(3):  # part-way: some of the window staged
        assert compactor.compact_once(conn, 10 * WINDOW, config)
    late = [(1, 5, 123.25), (2, 7, "late")]
    assert insert(conn, late) == 2
    drain(conn, 10 * WINDOW, config)
    assert head_count(conn) == 0
    got = list(scan.read_range(conn, [1, 2, 3], None, None))
    assert len(got) == len(rows) + 2
    assert (1, 5, 123.25) in got and (2, 7, "late") in got


def test_restart_mid_window_resumes_without_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    conn = open_db(path, 5)
    rows = population(5, 3, seed=4)
    insert(conn, rows)
    config = compactor.CompactionConfig(window_ns=WINDOW, grace_ns=0, max_rows=50)
    for _ in range(25):  # into the pack or delete step of some window
        compactor.compact_once(conn, 10 * WINDOW, config)
    conn.close()  # the per-connection work state is gone
    conn = store.connect(path)
    drain(conn, 10 * WINDOW, config)
    assert head_count(conn) == 0
    got = list(scan.read_range(conn, range(1, 6), None, None))
    assert sorted(got) == sorted(rows)


def test_maintenance_hook_uses_defaults(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "t.db", 2)
    w = compactor.WINDOW_NS
    insert(conn, [(1, 10, 1.5), (2, w + 10, 2)])
    # One step per call, True while there may be more to do.
    assert compactor.maintenance(conn, w + compactor.GRACE_NS)  # window 0 closed, 1 open
    assert not compactor.maintenance(conn, w + compactor.GRACE_NS)
    assert conn.execute("SELECT series_id, start_ns, count FROM blocks").fetchall() == [(1, 0, 1)]
    assert head_count(conn) == 1
    assert not conn.in_transaction
    # The first hour is merged once it is closed and a later block exists.
    hour = compactor.MERGE_NS
    insert(conn, [(1, hour + 10, 3.5)])
    steps = 0
    while compactor.maintenance(conn, hour + compactor.MERGE_GRACE_NS):
        steps += 1
    assert steps == 3  # window 1, the hour's window, then the merge
    assert conn.execute(
        "SELECT series_id, start_ns, end_ns, count FROM blocks ORDER BY start_ns, series_id"
    ).fetchall() == [(1, 0, hour, 1), (2, 0, hour, 1), (1, hour, hour + w, 1)]


TWO_LEVEL = compactor.CompactionConfig(
    window_ns=WINDOW, grace_ns=5 * S, max_rows=300, merge_ns=10 * WINDOW, merge_grace_ns=30 * S
)


def test_two_levels_small_blocks_then_merged(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "t.db", 40)
    rows = population(40, 25, seed=10)  # 25 minutes: merge windows 0, 1 and half of 2
    insert(conn, rows)
    drain(conn, 10 * WINDOW + 20 * S, TWO_LEVEL)  # minutes 0..9 closed; merge window 0 not
    assert conn.execute("SELECT DISTINCT end_ns - start_ns FROM blocks").fetchall() == [(WINDOW,)]
    assert conn.execute("SELECT min(ts) FROM readings_head").fetchone() == (10 * WINDOW + 1000,)
    drain(conn, 20 * WINDOW + 20 * S, TWO_LEVEL)  # merge window 0 closed: merged; 1 not
    sizes = conn.execute(
        "SELECT start_ns, end_ns - start_ns, count(*), sum(count) FROM blocks GROUP BY 1, 2"
    ).fetchall()
    assert sizes[0] == (0, 10 * WINDOW, 40, 40 * 60)
    assert {size for _, size, _, _ in sizes[1:]} == {WINDOW}
    # A late reading for a merged window goes into its merged block; one for a small
    # block's window into that small block.
    late = [(1, 5, 123.25), (2, 10 * WINDOW + 7, "late")]
    insert(conn, late)
    drain(conn, 40 * WINDOW, TWO_LEVEL)  # everything closed: windows 1 and 2 merged too
    assert head_count(conn) == 0
    blocks = conn.execute("SELECT start_ns, end_ns, count(*) FROM blocks GROUP BY 1, 2").fetchall()
    assert blocks == [(m * WINDOW, (m + 10) * WINDOW, 40) for m in (0, 10, 20)]
    got = list(scan.read_range(conn, range(1, 41), None, None))
    assert got == sorted(rows + late, key=lambda r: (r[1], r[0]))


DIRECT = compactor.CompactionConfig(
    window_ns=WINDOW,
    grace_ns=5 * S,
    max_rows=300,
    merge_ns=10 * WINDOW,
    merge_grace_ns=30 * S,
    direct_merge=True,
)


@pytest.mark.parametrize("run_rows", [100_000, 500], ids=["one-read", "read-in-slices"])
def test_a_closed_backlog_merge_window_goes_straight_into_its_final_blocks(
    tmp_path: Path, run_rows: int
) -> None:
    # A backlog (readings of long-closed merge windows, no blocks yet): each merge window
    # closed as a merge closes becomes one final block per series, never small blocks,
    # read in one go or in slices of run_rows. The merge window whose grace is not over
    # takes the two levels.
    config = dataclasses.replace(DIRECT, run_rows=run_rows)
    conn = open_db(tmp_path / "t.db", 40)
    rows = population(40, 25, seed=21)  # merge windows 0, 1 and half of 2
    rows[7] = (rows[7][0], rows[7][1], 17)  # an int among a float series' values
    rows[9] = (rows[9][0], rows[9][1], None)
    insert(conn, rows)
    drain(conn, 20 * WINDOW + 20 * S, config)  # merge window 1: not closed as a merge yet
    sizes = conn.execute(
        "SELECT start_ns, end_ns - start_ns, count(*), sum(count) FROM blocks GROUP BY 1, 2"
    ).fetchall()
    assert sizes[0] == (0, 10 * WINDOW, 40, 40 * 60)
    assert {size for _, size, _, _ in sizes[1:]} == {WINDOW}  # merge window 1: small blocks
    # Written once, in their final form: the file's first 40 blocks, none plain.
    assert conn.execute("SELECT max(id) FROM blocks WHERE start_ns = 0").fetchone() == (40,)
    assert conn.execute(
        "SELECT count(*) FROM blocks WHERE start_ns = 0 AND unicode(data) = 2"
    ).fetchone() == (0,)
    drain(conn, 40 * WINDOW, config)
    assert head_count(conn) == 0
    got = list(scan.read_range(conn, range(1, 41), None, None))
    assert got == sorted(rows, key=lambda r: (r[1], r[0]))
    assert all(
        type(v) is type(w)
        for (_, _, v), (_, _, w) in zip(got, sorted(rows, key=lambda r: (r[1], r[0])), strict=True)
    )


def test_a_late_reading_during_a_direct_merge_window_stays_and_merges_later(
    tmp_path: Path,
) -> None:
    # Read, then a late reading lands in a slice already read: the slice's range DELETE
    # would count one row more, so exactly the rows read are deleted; the late one stays
    # in the head and merges into its series' final block on a later call.
    config = dataclasses.replace(DIRECT, run_rows=500)
    conn = open_db(tmp_path / "t.db", 40)
    rows = population(40, 11, seed=24)  # merge window 0, and a minute past it
    insert(conn, rows)
    steps = 0
    while directmerge.current(conn) is None or directmerge.current(conn).to_write is None:  # type: ignore[union-attr]
        assert compactor.compact_once(conn, 40 * WINDOW, config)
        steps += 1
    assert steps > 1  # read in slices
    late = (3, 5 * S + 3, 42.5)
    insert(conn, [late])
    drain(conn, 40 * WINDOW, config)
    assert head_count(conn) == 0
    got = list(scan.read_range(conn, range(1, 41), None, None))
    assert got == sorted([*rows, late], key=lambda r: (r[1], r[0]))
    assert conn.execute(
        "SELECT start_ns, end_ns FROM blocks WHERE end_ns - start_ns = ? GROUP BY 1", (10 * WINDOW,)
    ).fetchall() == [(0, 10 * WINDOW), (10 * WINDOW, 20 * WINDOW)]


def test_a_backlog_merge_window_waits_until_all_its_windows_settle(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "t.db", 4)
    rows = population(4, 11, seed=22)  # merge window 0 whole, and a minute past it
    insert(conn, rows)
    clock = [0.0]
    activity = Activity(WINDOW, 10 * WINDOW, clock=lambda: clock[0])
    activity.note([9 * WINDOW + 1])  # its last window is still receiving readings
    assert compactor.compact_once(conn, 40 * WINDOW, DIRECT, activity) == 0
    assert head_count(conn) == len(rows)
    clock[0] += 60.0  # quiet since: settled
    while compactor.compact_once(conn, 40 * WINDOW, DIRECT, activity):
        pass
    assert head_count(conn) == 0
    assert conn.execute(
        "SELECT max(id), count(*) FROM blocks WHERE start_ns = 0 AND end_ns = ?", (10 * WINDOW,)
    ).fetchone() == (4, 4)  # written once each: straight from the head


def test_a_backlog_hour_with_nothing_stored_past_it_takes_the_two_levels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The replay may not have reached the hour's later windows: nothing after the hour is
    # stored, so it is not read whole (its later readings would all arrive late).
    conn = open_db(tmp_path / "t.db", 4)
    rows = population(4, 10, seed=25)  # merge window 0 exactly
    insert(conn, rows)
    begun: list[int] = []
    real = directmerge.begin

    def begin(c: sqlite3.Connection, start: int, end: int) -> directmerge.Hour:
        begun.append(start)
        return real(c, start, end)

    monkeypatch.setattr(directmerge, "begin", begin)
    drain(conn, 40 * WINDOW, DIRECT)
    assert begun == []
    assert head_count(conn) == 0
    assert conn.execute(
        "SELECT count(*), sum(count) FROM blocks WHERE start_ns = 0 AND end_ns = ?", (10 * WINDOW,)
    ).fetchone() == (4, len(rows))  # small blocks, then merged


def test_the_last_hour_of_a_backlog_goes_straight_into_its_blocks_once_quiet(
    tmp_path: Path,
) -> None:
    # Nothing is stored past the hour, but the activity tells: readings arrived in it
    # until a moment ago, so it waits (it holds more than max_rows readings); once none
    # arrived for merge_quiet_s the replay is done with it, and it goes straight into its
    # final blocks.
    conn = open_db(tmp_path / "t.db", 4)
    rows = population(4, 10, seed=26)  # merge window 0 exactly
    insert(conn, rows)
    config = dataclasses.replace(DIRECT, max_rows=len(rows) - 1)
    clock = [0.0]
    activity = Activity(WINDOW, 10 * WINDOW, clock=lambda: clock[0])
    activity.note([rows[-1][1]])  # the replay's last batch, just now
    clock[0] += 10.0  # every window settled (5 s), the hour not quiet yet (30 s)
    assert compactor.compact_once(conn, 40 * WINDOW, config, activity) == 0
    assert head_count(conn) == len(rows)
    clock[0] += 30.0
    while compactor.compact_once(conn, 40 * WINDOW, config, activity):
        pass
    assert head_count(conn) == 0
    assert conn.execute(
        "SELECT max(id), count(*), sum(count) FROM blocks WHERE start_ns = 0 AND end_ns = ?",
        (10 * WINDOW,),
    ).fetchone() == (4, 4, len(rows))  # written once each: straight from the head


def test_a_trickle_into_the_last_hour_holds_compaction_back_at_most_max_wait(
    tmp_path: Path,
) -> None:
    # Readings keep arriving in the hour every few seconds: it never turns quiet, so the
    # wait ends max_wait_s after its first reading, as a window's does.
    conn = open_db(tmp_path / "t.db", 4)
    rows = population(4, 10, seed=27)
    insert(conn, rows)
    config = dataclasses.replace(DIRECT, max_rows=len(rows) - 1)
    clock = [0.0]
    activity = Activity(WINDOW, 10 * WINDOW, clock=lambda: clock[0])
    activity.note([rows[-1][1]])  # the replay's batch that brought the hour
    clock[0] += 8.0
    waited = 8
    while compactor.compact_once(conn, 40 * WINDOW, config, activity) == 0:
        activity.note([5 * S])  # a trickle into the hour's first window...
        clock[0] += 4.0
        activity.note([9 * WINDOW + S])  # ...and its last, every 4 s
        clock[0] += 4.0
        waited += 8
        assert waited <= activity.max_wait_s + 8
    assert waited >= activity.max_wait_s - 8
    while compactor.compact_once(conn, 40 * WINDOW, config, activity):
        pass
    assert head_count(conn) == 0


def test_a_few_late_readings_in_an_old_hour_are_not_held_back(tmp_path: Path) -> None:
    # An hour of fewer than max_rows readings (a device's spool, a late batch) with nothing
    # stored past it and readings arriving: not worth waiting for, its settled windows
    # are compacted at once, in two levels, as before.
    conn = open_db(tmp_path / "t.db", 4)
    rows = population(4, 10, seed=28)
    insert(conn, rows)
    config = dataclasses.replace(DIRECT, max_rows=len(rows) + 1)
    clock = [0.0]
    activity = Activity(WINDOW, 10 * WINDOW, clock=lambda: clock[0])
    activity.note([rows[-1][1]])
    clock[0] += 10.0  # every window settled, the hour not quiet
    assert compactor.compact_once(conn, 40 * WINDOW, config, activity) > 0
    assert conn.execute("SELECT count(*) FROM blocks WHERE end_ns - start_ns < ?",
                        (10 * WINDOW,)).fetchone()[0] > 0  # fmt: skip


def test_a_merge_window_over_direct_max_rows_takes_the_two_levels(tmp_path: Path) -> None:
    config = dataclasses.replace(DIRECT, direct_max_rows=100, run_rows=60)
    conn = open_db(tmp_path / "t.db", 4)
    rows = population(4, 11, seed=23)  # 240 readings in merge window 0, 24 past it
    insert(conn, rows)
    handled = 0
    while compactor.compact_once(conn, 40 * WINDOW, config):
        handled += 1
        if head_count(conn) == 0:
            break
    assert directmerge.skipped(conn, 0)
    assert conn.execute(
        "SELECT DISTINCT end_ns - start_ns FROM blocks WHERE start_ns < ?", (10 * WINDOW,)
    ).fetchall() == [(WINDOW,)]
    got = list(scan.read_range(conn, range(1, 5), None, None))
    assert got == sorted(rows, key=lambda r: (r[1], r[0]))


def test_merge_of_an_idle_collectors_last_hour_keeps_the_horizon_above_every_reading(
    tmp_path: Path,
) -> None:
    # The writer looks for resent readings in blocks only below compaction_horizon; merging
    # moves blocks' starts back to the hour's start and must never leave a stored reading
    # at or above it, at any step.
    conn = open_db(tmp_path / "t.db", 40)
    rows = [(sid, ts, v) for sid, ts, v in population(40, 5, seed=12) if sid != 7]
    rows.append((7, 95 * S, 1.0))
    rows.append((7, 9 * WINDOW + 59 * S, 2.0))  # series 7 owns the newest small block alone
    insert(conn, rows)
    config = compactor.CompactionConfig(
        window_ns=WINDOW, grace_ns=0, max_rows=60, merge_ns=10 * WINDOW, merge_grace_ns=0
    )
    steps = 0
    while compactor.compact_once(conn, 100 * WINDOW, config):
        steps += 1
        (horizon,) = conn.execute("SELECT below_ns FROM compaction_horizon").fetchone()
        assert conn.execute("SELECT coalesce(max(last_ts), -1) FROM blocks").fetchone()[0] < horizon
    assert steps > 12  # 10 head windows, then the merge in several slices
    assert conn.execute("SELECT DISTINCT start_ns, end_ns FROM blocks").fetchall() == [
        (0, 10 * WINDOW)
    ]
    assert conn.execute("SELECT below_ns FROM compaction_horizon").fetchone() == (
        9 * WINDOW + 59 * S + 1,
    )
    got = list(scan.read_range(conn, range(1, 41), None, None))
    assert got == sorted(rows, key=lambda r: (r[1], r[0]))


# Two levels, no grace periods, merges in slices of about 200 readings.
MERGING = compactor.CompactionConfig(
    window_ns=WINDOW, grace_ns=0, max_rows=200, merge_ns=10 * WINDOW, merge_grace_ns=0
)


def test_merge_restarts_safely_on_a_new_connection(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    conn = open_db(path, 40)
    rows = population(40, 25, seed=11)
    insert(conn, rows)
    drain(conn, 12 * WINDOW, MERGING)  # window 10 is a small block: merge window 0 may go
    conn.close()
    conn = store.connect(path)
    drain(conn, 12 * WINDOW, MERGING)
    assert conn.execute(
        "SELECT count(*) FROM blocks WHERE start_ns = 0 AND end_ns = ?", (10 * WINDOW,)
    ).fetchone() == (40,)


def test_two_compactors_merging_at_once_lose_and_duplicate_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A merge step encodes with no write lock held. If another compactor (a maintenance
    # process still finishing its step while a new one starts) merges the same blocks in
    # that time, the step sees the slice changed and does it again under the lock.
    path = tmp_path / "t.db"
    conn = open_db(path, 40)
    rows = population(40, 25, seed=13)
    insert(conn, rows)
    config = MERGING
    while conn.execute(
        "SELECT count(*) FROM readings_head WHERE ts < ?", (20 * WINDOW,)
    ).fetchone()[0]:
        assert compactor.compact_once(conn, 20 * WINDOW, config)  # head windows first
    other = store.connect(path)
    real = merging._merged_blocks
    raced: list[int] = []
    late = (1, 5 * S + 3, 7.25)

    def merged_while_the_other_merges(*args: Any) -> Any:
        if not raced:
            raced.append(0)
            insert(other, [late])  # a late reading the other one merges into series 1's hour
            raced[0] = drain(other, 20 * WINDOW, config)  # the other one does it all
        return real(*args)

    monkeypatch.setattr(merging, "_merged_blocks", merged_while_the_other_merges)
    drain(conn, 20 * WINDOW, config)
    assert raced and raced[0] > 0
    assert conn.execute(
        "SELECT count(*) FROM blocks WHERE end_ns - start_ns = ?", (10 * WINDOW,)
    ).fetchone() == (2 * 40,)  # merge windows 0 and 1, once each
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    got = list(scan.read_range(conn, range(1, 41), None, None))
    assert got == sorted([*rows, late], key=lambda r: (r[1], r[0]))
    assert (
        conn.execute("SELECT sum(count) FROM blocks").fetchone()[0] + head_count(conn)
        == len(rows) + 1
    )


def test_compaction_inside_callers_transaction_uses_a_savepoint(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "t.db", 1)
    insert(conn, [(1, 10, 1.5)])
    conn.execute("BEGIN")
    drain(conn, 10 * WINDOW)
    assert conn.in_transaction
    conn.execute("ROLLBACK")
    assert head_count(conn) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window_ns": 0},
        {"window_ns": 2 * 86_400 * S},
        {"grace_ns": -1},
        {"max_rows": 0},
        {"direct_max_rows": 0},
    ],
)
def test_config_is_checked(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        compactor.CompactionConfig(**kwargs)  # type: ignore[arg-type]


def test_retention_drops_whole_blocks_and_old_head_rows(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "t.db", 2)
    insert(conn, population(2, 5, seed=5))
    drain(conn, 3 * WINDOW + 5 * S)  # windows 0..2 in blocks, 3..4 in the head
    cutoff = 3 * WINDOW + 30 * S
    dropped, deleted = retention.apply_retention(conn, cutoff, batch_rows=4)
    assert dropped == 2 * 3  # every block ends before the cutoff
    assert deleted == 2 * 3  # head rows of the first half of window 3
    got = list(scan.read_range(conn, [1, 2], None, None))
    assert min(ts for _, ts, _ in got) >= cutoff
    assert len(got) == 2 * 5 * 6 - 2 * 3 * 6 - 6
    # A block straddling the cutoff stays whole.
    drain(conn, 10 * WINDOW)
    assert retention.apply_retention(conn, 4 * WINDOW + S) == (2, 0)  # window 3's blocks
    assert conn.execute(
        "SELECT count(*) FROM blocks WHERE start_ns = ?", (4 * WINDOW,)
    ).fetchone() == (2,)


class _LateWriter(Activity):
    """Stores one more reading through another connection (a writer elsewhere) the first
    time the compactor picks a window: between its read and its write."""

    def __init__(self, path: Path, late: tuple[int, int, Any]) -> None:
        super().__init__(WINDOW, 0)
        self.other = store.connect(path)
        self.late = late
        self.fired = False

    def compacted(self, start_ns: int) -> None:
        super().compacted(start_ns)
        if not self.fired:
            self.fired = True
            insert(self.other, [self.late])


def test_reading_stored_while_window_is_encoded_is_kept_once(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    conn = open_db(path, 3)
    rows = population(3, 2, seed=8)
    insert(conn, rows)
    late = (2, 5 * S + 7, 99.5)  # window 0, a timestamp the head does not hold yet
    activity = _LateWriter(path, late)
    config = compactor.CompactionConfig(window_ns=WINDOW, grace_ns=0, max_rows=300)
    assert compactor.compact_once(conn, 2 * WINDOW, config, activity)
    assert activity.fired
    drain(conn, 2 * WINDOW, config)
    assert head_count(conn) == 0
    got = list(scan.read_range(conn, [1, 2, 3], None, None))
    assert got == sorted([*rows, late], key=lambda r: (r[1], r[0]))
    assert conn.execute("SELECT sum(count) FROM blocks").fetchone()[0] == len(rows) + 1
    # One block per series and window: the fallback did not write a second one.
    assert conn.execute("SELECT count(*) FROM blocks").fetchone()[0] == 3 * 2


_CHILD = """
import sys
from collector.storage.sqlite import compactor, store
conn = store.connect(sys.argv[1])
config = compactor.CompactionConfig(
    window_ns=int(sys.argv[2]), grace_ns=0, max_rows=int(sys.argv[4]), merge_ns=int(sys.argv[3]),
    merge_grace_ns=0, run_windows=int(sys.argv[5]), direct_merge=sys.argv[6] == "1",
)
steps = 0
while compactor.compact_once(conn, 10**18, config):
    steps += 1
    print(steps, flush=True)
print("done", flush=True)
"""


@pytest.mark.parametrize(
    ("merge_ns", "max_rows", "run_windows", "direct"),
    [
        (0, 60, 1, False),
        (5 * WINDOW, 60, 1, False),
        (5 * WINDOW, 300, 1, False),
        (10 * WINDOW, 300, 5, False),
        (5 * WINDOW, 60, 1, True),
    ],
    ids=[
        "one-level",
        "two-level-staged",
        "two-level-whole-windows",
        "two-level-slots",
        "direct-merge-windows",
    ],
)
def test_sigkill_during_compaction_loses_and_duplicates_nothing(
    tmp_path: Path, merge_ns: int, max_rows: int, run_windows: int, direct: bool
) -> None:
    path = tmp_path / "t.db"
    conn = open_db(path, 40)
    rows = population(40, 20, seed=6)
    insert(conn, rows[::2])
    config = compactor.CompactionConfig(
        window_ns=WINDOW,
        grace_ns=0,
        max_rows=max_rows,
        merge_ns=merge_ns,
        merge_grace_ns=0,
        run_windows=run_windows,
        direct_merge=direct,
    )
    drain(conn, 4 * WINDOW, config)  # some windows compacted already
    insert(conn, rows[1::2])  # late readings for compacted windows and fresh ones
    resent = rows[:200:3]
    insert(conn, [(sid, ts, "resend wins nothing") for sid, ts, _ in resent])
    conn.close()
    rnd = random.Random(7)
    kills = 0
    for _ in range(6):
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _CHILD,
                str(path),
                str(WINDOW),
                str(merge_ns),
                str(max_rows),
                str(run_windows),
                "1" if direct else "0",
            ],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        assert child.stdout is not None
        target = rnd.randrange(1, 40 if max_rows < 100 else 6)  # whole windows: fewer steps
        deadline = time.monotonic() + 60
        finished = False
        for line in child.stdout:  # progress lines pace the kill: no sleeps
            if line.strip() == "done":
                finished = True
                break
            if int(line) >= target:
                break
            assert time.monotonic() < deadline
        if not finished:
            child.send_signal(signal.SIGKILL)
            kills += 1
        child.wait(timeout=60)
        child.stdout.close()
        if finished:
            break
    assert kills >= 3
    conn = store.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    drain(conn, 10**18, config)
    assert head_count(conn) == 0
    if merge_ns:  # the 20 minutes' merge windows, all merged
        merged = conn.execute(
            "SELECT count(*) FROM blocks WHERE end_ns - start_ns = ?", (merge_ns,)
        ).fetchone()
        assert merged == (20 * WINDOW // merge_ns * 40,)
    got = list(scan.read_range(conn, range(1, 41), None, None))
    want = sorted(rows, key=lambda r: (r[1], r[0]))
    assert got == want
    assert conn.execute("SELECT sum(count) FROM blocks").fetchone()[0] == len(rows)


def test_plain_sql_views(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "t.db", 2)
    hour = compactor.MERGE_NS
    insert(conn, [(1, 1_500, 20.5), (1, 2_500, 21.5), (2, hour + 1_000_000, "on")])
    while compactor.maintenance(conn, hour + compactor.GRACE_NS):
        pass  # the first minute in a small block
    insert(conn, [(2, hour + compactor.MERGE_GRACE_NS, "off")])
    while compactor.maintenance(conn, hour + compactor.MERGE_GRACE_NS):
        pass  # merged: a later block exists
    recent = conn.execute("SELECT time, ts, device, sensor, value FROM readings_recent").fetchall()
    assert recent == [
        ("1970-01-01T01:05:00.000Z", hour + compactor.MERGE_GRACE_NS, "dev", "s2", "off")
    ]
    summary = conn.execute(
        "SELECT window_start, window_end, sensor, count, min, max, avg, first, last "
        "FROM blocks_summary WHERE sensor = 's1'"
    ).fetchall()
    window = ("1970-01-01T00:00:00.000Z", "1970-01-01T01:00:00.000Z")
    assert summary == [(*window, "s1", 2, 20.5, 21.5, 21.0, 20.5, 21.5)]


def test_retention_with_nothing_to_drop_keeps_compaction_going(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "t.db", 40)
    insert(conn, population(40, 10, seed=8))
    config = compactor.CompactionConfig(window_ns=10 * WINDOW, grace_ns=0, max_rows=100)
    for _ in range(30):  # staged, part-way through packing
        compactor.compact_once(conn, 100 * WINDOW, config)
    step = "SELECT step, cursor FROM temp.compaction_state"
    before = conn.execute(step).fetchone()
    assert before is not None and before[0] == "pack"
    assert retention.apply_retention(conn, 0) == (0, 0)
    assert conn.execute(step).fetchone() == before
    assert retention.apply_retention(conn, 1) == (0, 0)  # nothing that old either
    drain(conn, 100 * WINDOW, config)
    assert head_count(conn) == 0
    assert conn.execute("SELECT sum(count) FROM blocks").fetchone() == (2400,)


def test_retention_during_compaction_restarts_the_window_safely(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "t.db", 40)
    rows = population(40, 10, seed=9)
    insert(conn, rows)
    config = compactor.CompactionConfig(window_ns=10 * WINDOW, grace_ns=0, max_rows=100)
    for _ in range(40):  # part-way through packing: some blocks written, head untouched
        compactor.compact_once(conn, 100 * WINDOW, config)
    cutoff = 5 * WINDOW
    _, deleted = retention.apply_retention(conn, cutoff)
    assert deleted > 0
    drain(conn, 100 * WINDOW, config)
    got = list(scan.read_range(conn, range(1, 41), None, None))
    assert len(got) == len(set(got))  # nothing twice
    assert [r for r in got if r[1] >= cutoff] == sorted(
        (r for r in rows if r[1] >= cutoff), key=lambda r: (r[1], r[0])
    )


def test_free_pages_go_back_to_the_file_system(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    conn = open_db(path, 40)
    assert conn.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # incremental, from creation
    insert(conn, population(40, 120, seed=30))  # 28,800 rows, two hours
    drain(conn, 1000 * WINDOW, TWO_LEVEL)  # the head's pages are free now
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    assert free > 0.3 * pages
    steps = 0
    while store.reclaim_space(conn, min_free_pages=8, step_pages=16):
        steps += 1
        assert steps < 10_000
    left = conn.execute("PRAGMA freelist_count").fetchone()[0]
    assert steps > 1 and left < max(8, 0.1 * pages)
    assert conn.execute("PRAGMA page_count").fetchone()[0] <= pages - free + left
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert conn.execute("SELECT sum(count) FROM blocks").fetchone() == (40 * 720,)
    assert not store.reclaim_space(conn)  # below the default bounds: nothing to do


def test_free_pages_go_back_in_one_pass_at_once(tmp_path: Path) -> None:
    # All at once: one commit in full auto-vacuum mode gives every free page back, and the
    # file is left in incremental mode, whole.
    path = tmp_path / "t.db"
    conn = open_db(path, 40)
    insert(conn, population(40, 120, seed=30))
    drain(conn, 1000 * WINDOW, TWO_LEVEL)
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    assert free > 0.3 * pages
    assert store.reclaim_space(conn, min_free_pages=8, at_once=True)
    assert not conn.in_transaction
    assert conn.execute("PRAGMA freelist_count").fetchone() == (0,)
    assert conn.execute("PRAGMA page_count").fetchone()[0] == pages - free
    assert conn.execute("PRAGMA auto_vacuum").fetchone() == (2,)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert conn.execute("SELECT sum(count) FROM blocks").fetchone() == (40 * 720,)
    assert not store.reclaim_space(conn, min_free_pages=8, at_once=True)  # nothing left
    other = store.connect(path)  # another connection sees incremental mode too
    assert other.execute("PRAGMA auto_vacuum").fetchone() == (2,)
    other.close()


def test_a_file_left_in_full_auto_vacuum_mode_is_incremental_again_on_connect(
    tmp_path: Path,
) -> None:
    # A process killed between the one-pass reclaim's two commits leaves the header in
    # full mode; the next connection puts it back.
    path = tmp_path / "t.db"
    conn = open_db(path, 4)
    conn.executescript("BEGIN IMMEDIATE; PRAGMA auto_vacuum = FULL; COMMIT;")
    conn.close()
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA auto_vacuum").fetchone() == (1,)
    raw.close()
    conn = store.connect(path)
    assert conn.execute("PRAGMA auto_vacuum").fetchone() == (2,)
    conn.close()
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # on disk, not just here
    raw.close()


@pytest.mark.parametrize("arriving", [False, True], ids=["quiet", "readings-arriving"])
def test_free_pages_go_back_at_once_only_while_no_readings_arrive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arriving: bool
) -> None:
    # Giving every page back at once holds the write lock for all of it: only when the
    # writer has stored nothing for a while; otherwise in steps that keep the lock short.
    calls: list[bool] = []
    real = store.reclaim_space

    def reclaim(conn: sqlite3.Connection, *, at_once: bool = False) -> bool:
        calls.append(at_once)
        return real(conn, min_free_pages=8, step_pages=16, at_once=at_once)

    monkeypatch.setattr(store, "reclaim_space", reclaim)
    conn = open_db(tmp_path / "t.db", 40)
    insert(conn, population(40, 120, seed=33))
    drain(conn, 1000 * WINDOW, compactor.DEFAULT_CONFIG)
    clock = [100.0]
    activity = Activity(WINDOW, 10 * WINDOW, clock=lambda: clock[0])
    if arriving:
        activity.note([5000 * WINDOW])  # a live window just received readings
    else:
        activity.note([5000 * WINDOW])
        clock[0] += 60.0  # nothing since
    calls.clear()
    steps = 0
    while compactor.maintenance(conn, 10_000 * WINDOW, activity):
        steps += 1
        assert steps < 10_000
    assert calls and set(calls) == {not arriving}
    assert (len(calls) == 2) is (not arriving)  # one pass, then nothing left to give back
    assert (
        conn.execute("PRAGMA freelist_count").fetchone()[0]
        < 0.1 * conn.execute("PRAGMA page_count").fetchone()[0]
    )


def test_a_reading_that_lands_while_a_window_is_encoded_is_compacted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A window is read and encoded with no lock held; the writer may add a late reading to
    # it meanwhile. The write must notice (the window's head rows are not the ones read),
    # leave everything as it was and let the step redo the window under the lock.
    path = tmp_path / "t.db"
    conn = open_db(path, 3)
    insert(conn, [(sid, 10 * S + sid, 1.0) for sid in (1, 2, 3)])
    other = store.connect(path)
    encoded: list[Any] = []

    def late_reading_meanwhile(*args: Any) -> Any:
        if not encoded:
            insert(other, [(2, 20 * S, 2.0)])  # the writer's commit, between read and write
        encoded.append(args[2])
        return head_block_rows(*args)

    monkeypatch.setattr(compactor, "head_block_rows", late_reading_meanwhile)
    assert compactor.compact_once(conn, 100 * WINDOW, CONFIG) == 4  # redone under the lock
    assert len(encoded[0]) == 3  # what the unlocked pass had read
    assert head_count(conn) == 0
    rows = conn.execute("SELECT series_id, count, first_ts, last_ts FROM blocks ORDER BY 1")
    assert rows.fetchall() == [(1, 1, 10 * S + 1, 10 * S + 1), (2, 2, 10 * S + 2, 20 * S),
                               (3, 1, 10 * S + 3, 10 * S + 3)]  # fmt: skip
    other.close()


class _RecordingTurns(sqlite3.Connection):
    """A connection whose write turns are counted, as collector.storage.sqlite.maintainer's are
    taken."""

    turns = 0
    in_turn = False

    @contextlib.contextmanager
    def write_turn(self) -> Iterator[None]:
        self.turns += 1
        self.in_turn = True
        try:
            yield
        finally:
            self.in_turn = False


def test_free_pages_go_back_in_the_write_turn(tmp_path: Path) -> None:
    # Outside the turn the ingest writer would meet the vacuum in SQLite's busy handler,
    # which sleeps up to 100 ms between tries instead of being woken at the commit.
    path = tmp_path / "t.db"
    open_db(path, 40).close()
    conn = store.connect(path, factory=_RecordingTurns)
    assert isinstance(conn, _RecordingTurns)
    insert(conn, population(40, 60, seed=31))
    drain(conn, 1000 * WINDOW, TWO_LEVEL)
    turns = conn.turns
    assert store.reclaim_space(conn, min_free_pages=8, step_pages=16)
    assert conn.turns == turns + 1 and not conn.in_transaction


def test_no_pages_go_back_while_closed_head_windows_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In a backlog the pages compaction frees are the ones the head's next rows take:
    # moving them to the end of the file and back would only cost the writer its lock.
    reclaim = functools.partial(store.reclaim_space, min_free_pages=8, step_pages=16)
    monkeypatch.setattr(store, "reclaim_space", reclaim)  # this file's few pages count
    path = tmp_path / "t.db"
    conn = open_db(path, 40)
    insert(conn, population(40, 120, seed=32))
    drain(conn, 1000 * WINDOW, compactor.DEFAULT_CONFIG)  # the head's pages are free now
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    assert free > 0.3 * conn.execute("PRAGMA page_count").fetchone()[0]
    w = compactor.WINDOW_NS
    late = 100 * w  # a closed window, still filling: the activity says so
    insert(conn, [(sid, late + sid * S, 1.5) for sid in range(1, 41)])
    now = 1000 * w
    clock = [0.0]
    activity = Activity(w, compactor.MERGE_NS, clock=lambda: clock[0])
    activity.note([late])
    assert not compactor.maintenance(conn, now, activity)
    assert conn.execute("PRAGMA freelist_count").fetchone()[0] >= free  # nothing given back
    clock[0] += 3600.0  # the window settles: compacted, then the pages go back
    while compactor.maintenance(conn, now, activity):
        pass
    assert head_count(conn) == 0
    assert conn.execute("PRAGMA freelist_count").fetchone()[0] < free
    assert conn.execute("SELECT sum(count) FROM blocks").fetchone() == (40 * 720 + 40,)


# Two levels, head windows compacted five at a time when their 5-minute slot is closed.
SLOTS = compactor.CompactionConfig(
    window_ns=WINDOW,
    grace_ns=0,
    max_rows=300,
    merge_ns=10 * WINDOW,
    merge_grace_ns=5 * WINDOW,
    run_windows=5,
    run_rows=1_000,
)


def block_spans(conn: sqlite3.Connection) -> list[tuple[int, int, int]]:
    return conn.execute(
        "SELECT start_ns, end_ns, count(*) FROM blocks GROUP BY 1, 2 ORDER BY 1, 2"
    ).fetchall()


def test_a_closed_slot_is_compacted_into_one_block_per_series(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "t.db", 20)
    rows = population(20, 10, seed=20)
    insert(conn, rows)
    # Minute 0 closed, the slot's other windows not yet: window by window, as live.
    drain(conn, WINDOW, SLOTS)
    assert block_spans(conn) == [(0, WINDOW, 20)]
    # A backlog: both slots closed at once. Slot 0 already has a block: window by window;
    # slot 1 (minutes 5-9) becomes one block per series, in one step.
    steps = drain(conn, 10 * WINDOW + 1, SLOTS)
    assert block_spans(conn) == [
        *((m * WINDOW, (m + 1) * WINDOW, 20) for m in range(5)),
        (5 * WINDOW, 10 * WINDOW, 20),
    ]
    assert steps == 4 + 1  # four windows, then the slot
    # A late reading for a window inside the slot goes into the slot's block.
    late = (3, 7 * WINDOW + 5, 1.25)
    insert(conn, [late])
    drain(conn, 10 * WINDOW + 1, SLOTS)
    assert conn.execute(
        "SELECT start_ns, end_ns, count FROM blocks WHERE series_id = 3 AND start_ns >= ?",
        (5 * WINDOW,),
    ).fetchall() == [(5 * WINDOW, 10 * WINDOW, 31)]
    drain(conn, 20 * WINDOW, SLOTS)  # the merge window closed: one block per series
    assert block_spans(conn) == [(0, 10 * WINDOW, 20)]
    assert head_count(conn) == 0
    got = list(scan.read_range(conn, range(1, 21), None, None))
    assert got == sorted([*rows, late], key=lambda r: (r[1], r[0]))
    horizon = conn.execute("SELECT below_ns FROM compaction_horizon").fetchone()[0]
    assert horizon == 10 * WINDOW - 10 * S + 20 * 1000 + 1  # the last reading, plus one


def test_a_slot_waits_for_its_windows_to_settle(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "t.db", 10)
    insert(conn, population(10, 5, seed=21))
    clock = [100.0]
    activity = Activity(WINDOW, SLOTS.merge_ns, clock=lambda: clock[0])
    activity.note([3 * WINDOW + 7])  # minute 3 is still receiving readings
    assert compactor.compact_once(conn, 6 * WINDOW, SLOTS, activity) == 0
    assert head_count(conn) == 10 * 30
    clock[0] += activity.quiet_s
    assert compactor.compact_once(conn, 6 * WINDOW, SLOTS, activity) == 10 * 30
    assert block_spans(conn) == [(0, 5 * WINDOW, 10)]


def test_a_slot_too_large_goes_window_by_window(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "t.db", 40)
    rows = population(40, 5, seed=22)  # 1,200 rows in slot 0: more than run_rows
    insert(conn, rows)
    drain(conn, 5 * WINDOW, SLOTS)
    assert block_spans(conn) == [(m * WINDOW, (m + 1) * WINDOW, 40) for m in range(5)]
    assert list(scan.read_range(conn, range(1, 41), None, None)) == sorted(
        rows, key=lambda r: (r[1], r[0])
    )


def test_resend_into_a_slot_block_is_found_by_the_horizon(tmp_path: Path) -> None:
    # The writer looks into blocks only below compaction_horizon: a slot's blocks end after
    # a later window's block starts, so the horizon is the greatest last reading written,
    # not the end of the block with the greatest start.
    conn = open_db(tmp_path / "t.db", 2)
    insert(conn, [(1, m * WINDOW + 5, float(m)) for m in range(5)])
    drain(conn, 5 * WINDOW, SLOTS)
    assert block_spans(conn) == [(0, 5 * WINDOW, 1)]
    insert(conn, [(2, 2 * WINDOW + 9, 2.5)])  # series 2, a window inside the slot
    drain(conn, 5 * WINDOW, SLOTS)
    assert block_spans(conn) == [(0, 5 * WINDOW, 1), (2 * WINDOW, 3 * WINDOW, 1)]
    (horizon,) = conn.execute("SELECT below_ns FROM compaction_horizon").fetchone()
    assert horizon == 4 * WINDOW + 6
    held = scan.held_in_blocks(conn, [(0, 1, 4 * WINDOW + 5), (1, 2, 2 * WINDOW + 9)])
    assert held == {0, 1}


class _CountingTurns(sqlite3.Connection):
    """A connection that counts the rows each write turn changes (and the free pages it
    gives back): the work done while the ingest writer waits, counted rather than timed."""

    changes: list[int]
    pages: list[int]

    @contextlib.contextmanager
    def write_turn(self) -> Iterator[None]:
        changes = self.total_changes
        pages = self.execute("PRAGMA page_count").fetchone()[0]
        try:
            yield
        finally:
            self.changes.append(self.total_changes - changes)
            self.pages.append(pages - self.execute("PRAGMA page_count").fetchone()[0])


def test_the_write_lock_is_held_for_one_bounded_step_at_a_time(tmp_path: Path) -> None:
    # A window 24 times the step (stage, pack and delete in steps), then its freed pages
    # given back: no write turn changes more than a step's rows plus one block per series
    # of its slice (and the bookkeeping rows), none gives back more than a step of pages.
    # Emptying the stage of the finished window (a temp table, no lock needed) is not done
    # in a write turn either.
    reclaim = functools.partial(
        store.reclaim_space, min_free_pages=2, min_free_fraction=0.0, step_pages=2
    )
    path = tmp_path / "t.db"
    open_db(path, 40).close()
    conn = store.connect(path, factory=_CountingTurns)
    assert isinstance(conn, _CountingTurns)
    conn.changes, conn.pages = [], []
    insert(conn, population(40, 10, seed=41))  # 2,400 readings in one 10-minute window
    config = compactor.CompactionConfig(window_ns=10 * WINDOW, grace_ns=0, max_rows=100)
    drain(conn, 100 * WINDOW, config)
    assert head_count(conn) == 0
    assert conn.execute("SELECT count(*), sum(count) FROM blocks").fetchone() == (40, 2400)
    assert len(conn.changes) >= 2 * 2400 // 100  # pack and delete: one turn per step
    assert max(conn.changes) <= config.step + 40 + 5, conn.changes
    turns = len(conn.pages)
    while reclaim(conn):
        pass
    assert len(conn.pages) > turns + 1  # the free pages went back in several steps
    assert max(conn.pages[turns:]) <= 2
    assert not conn.in_transaction


def test_default_steps_are_short() -> None:
    # The default bounds on one write turn of the maintenance process: a staged step of
    # 5,000 rows and a reclaim step of 256 pages hold the lock for a few ms (not 20-100 ms:
    # docs/benchmarks.md, "ACK latency").
    assert compactor.DEFAULT_CONFIG.step <= 5_000
    assert store.RECLAIM_STEP_PAGES <= 256
