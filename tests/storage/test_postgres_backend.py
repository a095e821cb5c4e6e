"""What the PostgreSQL backend adds to the conformance suite: its partitions, retention by
dropping them, and two collectors sharing one database.

Each test runs on a throwaway database of the local server (tests/storage/pgserver.py:
skipped without one, failing when CI=true).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence

import psycopg
import pytest

from collector.ingest.prepare import Ingest
from collector.storage.interface import Filters, PreparedBatch, Session, Stored
from collector.storage.postgres import schema
from collector.storage.postgres.backend import PostgresStorage
from tests.storage.pgserver import throwaway_database

S = 10**9
DAY = schema.NS_PER_DAY
T0 = 19_700 * DAY + 12 * 3_600 * S  # noon of day 19,700 (2023-12-09)
D0 = 19_700
INGEST = Ingest.from_kinds()
DEADLINE_S = 20.0


@pytest.fixture
def url() -> Iterator[str]:
    with throwaway_database() as u:
        yield u


@pytest.fixture
def pg(url: str) -> Iterator[PostgresStorage]:
    s = PostgresStorage(url, now_ns=T0)
    try:
        yield s
    finally:
        s.close()


def batch(
    seq: int, readings: Sequence[tuple[str, int, object]], received_ns: int = T0
) -> PreparedBatch:
    return INGEST.prepare(
        seq, [[sensor, "counter", ts, v, None, None] for sensor, ts, v in readings], received_ns
    )


def sql(url: str, query: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return list(conn.execute(query, params))


def rows_in(url: str, table: str) -> int:
    return int(str(sql(url, f"SELECT count(*) FROM {table}")[0][0]))


def days(url: str) -> set[int]:
    with psycopg.connect(url, autocommit=True) as conn:
        return schema.partition_days(conn)


def wait_until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)  # polling a condition with a deadline, not synchronising on time


# ---------------------------------------------------------------- partitions and retention


def test_partitions_are_made_ahead_and_on_demand(pg: PostgresStorage, url: str) -> None:
    assert days(url) == {D0 - 1, D0, D0 + 1, D0 + 2}
    dev = pg.add_device("d", T0)[0].id
    late = T0 - 30 * DAY  # a backfilled day gets a partition of its own
    broken_clock = T0 + 3_000 * DAY  # far ahead: the default partition, no new table
    out = pg.store([(dev, batch(1, [("a", late, 1), ("a", T0, 2), ("a", broken_clock, 3)]))])
    assert out.outcomes[0].accepted == 3
    assert days(url) == {D0 - 30, D0 - 1, D0, D0 + 1, D0 + 2}
    assert rows_in(url, schema.partition_name(D0 - 30)) == 1
    assert rows_in(url, schema.partition_name(D0)) == 1
    assert rows_in(url, schema.DEFAULT_PARTITION) == 1
    # The day gets its partition later: the default's rows of that day move into it.
    with psycopg.connect(url, autocommit=True) as conn:
        assert schema.ensure_partitions(conn, [D0 + 3_000]) == [D0 + 3_000]
    assert rows_in(url, schema.DEFAULT_PARTITION) == 0
    assert rows_in(url, schema.partition_name(D0 + 3_000)) == 1
    again = pg.store([(dev, batch(1, [("a", late, 1), ("a", T0, 2), ("a", broken_clock, 3)]))])
    assert (again.outcomes[0].accepted, again.outcomes[0].duplicate) == (0, 3)


def test_retention_drops_whole_partitions_and_trims_the_cutoff_day(
    pg: PostgresStorage, url: str
) -> None:
    dev = pg.add_device("d", T0)[0].id
    day_start = D0 * DAY
    readings = [
        ("a", day_start + d * DAY + h * 3_600 * S, (d + 3) * 100 + h)
        for d in range(-3, 1)
        for h in range(24)
    ]
    readings.append(("a", 5 * S, 1))  # 1970: the default partition
    assert pg.store([(dev, batch(1, readings))]).outcomes[0].accepted == len(readings)
    assert {D0 - 3, D0 - 2} <= days(url)
    cutoff = day_start - DAY + 6 * 3_600 * S  # 06:00 the day before D0
    pg.apply_retention(cutoff)
    assert not {D0 - 3, D0 - 2} & days(url)  # dropped whole, not emptied
    assert rows_in(url, schema.partition_name(D0 - 1)) == 18  # 06:00..23:00 kept
    assert rows_in(url, schema.DEFAULT_PARTITION) == 0
    sid = pg.resolve_series(Filters())[0].id
    left = [ts for _, ts, _ in pg.read_range([sid], None, None)]
    assert left == sorted(ts for _, ts, _ in readings if ts >= cutoff)
    # The store path makes a dropped day again when a reading for it arrives.
    out = pg.store([(dev, batch(2, [("a", day_start - 3 * DAY, 7)]))])
    assert out.outcomes[0].accepted == 1 and D0 - 3 in days(url)


def test_tag_filters_match_values_holding_nul(pg: PostgresStorage) -> None:
    dev = pg.add_device("d", T0)[0].id
    pg.store([(dev, INGEST.prepare(1, [["t", "text", T0, "x", None, {"k": "a\x00b"}]], T0))])
    assert [x.sensor for x in pg.resolve_series(Filters(tags=(("k", "a\x00b"),)))] == ["t"]
    assert pg.resolve_series(Filters(tags=(("k", "a"),))) == []


def test_a_read_only_storage_refuses_writes(pg: PostgresStorage, url: str) -> None:
    from collector.storage.factory import open_storage

    pg.add_device("d", T0)
    ro = open_storage(url, readonly=True)
    try:
        assert [d.name for d in ro.list_devices()] == ["d"]
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            ro.add_device("e", T0)
    finally:
        ro.close()


# ---------------------------------------------------------------- two collectors


def test_a_held_stream_row_makes_the_other_collector_wait(pg: PostgresStorage, url: str) -> None:
    """The streams row lock serialises sessions and stores of one stream across collectors:
    while one transaction holds it (as a store does until it commits), another collector's
    HELLO waits on it, then gets an epoch above everything committed."""
    dev = pg.add_device("d", T0)[0].id
    first = pg.open_session(dev, "s", T0)
    other = PostgresStorage(url, now_ns=T0)
    holder = psycopg.connect(url)
    try:
        holder.execute(
            "SELECT epoch FROM streams WHERE device_id = %s AND stream = 's' FOR UPDATE", (dev,)
        )
        result: list[object] = []
        t = threading.Thread(target=lambda: result.append(other.open_session(dev, "s", T0 + S)))
        t.start()
        wait_until(
            lambda: bool(
                sql(
                    url,
                    "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO streams%%'",
                )
            ),
            "the second collector's HELLO to wait on the row lock",
        )
        assert result == []
        holder.execute(
            "UPDATE streams SET last_seq = 5 WHERE device_id = %s AND stream = 's'", (dev,)
        )
        holder.commit()
        t.join(DEADLINE_S)
        assert not t.is_alive()
        assert result and result[0] == (5, first.epoch + 1)  # saw the committed last_seq
    finally:
        holder.close()
        other.close()


def test_two_collectors_interleaving_sessions_of_one_stream_store_each_reading_once(
    url: str,
) -> None:
    """Two backend objects (two collectors) on one database, each in its own thread, take
    the same (device, stream) over from each other round after round, each sending seq r
    with one reading in round r (its value names the sender). In half the rounds the
    takeover commits before both stores run (the other one's store must be fenced); in the
    other half the takeover races the other's store. Both stores of a round race each other
    on the stream's row lock. Every reading is stored once, by a batch whose outcome
    counted it accepted; a fenced batch stores nothing."""
    n_rounds = 60
    setup = PostgresStorage(url, now_ns=T0)
    dev = setup.add_device("d", T0)[0].id
    setup.close()
    collectors = [PostgresStorage(url, now_ns=T0) for _ in range(2)]
    epochs = [c.open_session(dev, "s", T0).epoch for c in collectors]
    outcomes: dict[int, list[tuple[int, Stored]]] = {0: [], 1: []}
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(who: int) -> None:
        try:
            s = collectors[who]
            for seq in range(1, n_rounds + 1):
                ordered = seq % 4 < 2
                barrier.wait(DEADLINE_S)
                if seq % 2 == who:  # this one takes the stream over
                    epochs[who] = s.open_session(dev, "s", T0 + seq).epoch
                if ordered:
                    barrier.wait(DEADLINE_S)
                b = batch(seq, [("a", T0 + seq * S, 1_000 * (who + 1) + seq)])
                out = s.store([(Session(dev, "s", epochs[who]), b)]).outcomes[0]
                outcomes[who].append((seq, out))
                if ordered and seq % 2 != who:
                    assert out.fenced, (who, seq)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(who,)) for who in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors, errors
        assert not any(t.is_alive() for t in threads)
        s = collectors[0]
        sid = s.resolve_series(Filters())[0].id
        stored = {ts: v for _, ts, v in s.read_range([sid], None, None)}
        assert rows_in(url, "readings") == len(stored)  # no (series, ts) twice
        accepted = {(who, seq) for who, outs in outcomes.items() for seq, o in outs if o.accepted}
        assert sum(o.accepted for outs in outcomes.values() for _, o in outs) == len(stored)
        for ts, v in stored.items():
            assert isinstance(v, int)
            who, seq = v // 1_000 - 1, v % 1_000
            assert ts == T0 + seq * S and (who, seq) in accepted
        fenced = [(who, seq) for who, outs in outcomes.items() for seq, o in outs if o.fenced]
        assert len(fenced) >= n_rounds // 2
        for who, seq in fenced:
            assert stored.get(T0 + seq * S) != 1_000 * (who + 1) + seq
        not_fenced = [seq for outs in outcomes.values() for seq, o in outs if not o.fenced]
        last = s.open_session(dev, "s", T0 + DAY).last_seq
        assert last == max(not_fenced)
    finally:
        for c in collectors:
            c.close()


def test_two_collectors_storing_the_same_readings_at_once_neither_deadlock_nor_double(
    url: str,
) -> None:
    """A device on two streams through two collectors (a failover replaying what the other
    one is still storing): the same readings arrive in opposite orders at the same moment.
    Every writer takes its row locks in key order, so one waits for the other (no deadlock
    error) and each reading is counted accepted by exactly one of them."""
    setup = PostgresStorage(url, now_ns=T0)
    dev = setup.add_device("d", T0)[0].id
    setup.close()
    collectors = [PostgresStorage(url, now_ns=T0) for _ in range(2)]
    rounds, per_round = 12, 200
    accepted: list[list[int]] = [[], []]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(who: int) -> None:
        try:
            for r in range(rounds):
                readings = [
                    (f"s{k % 20}", T0 + (r * per_round + k) * S, k) for k in range(per_round)
                ]
                if who:
                    readings.reverse()
                b = batch(r + 1, readings)
                barrier.wait(DEADLINE_S)
                out = collectors[who].store([(Session(dev, f"stream-{who}"), b)])
                accepted[who].append(out.outcomes[0].accepted)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(who,)) for who in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors, errors
        assert [a + b for a, b in zip(*accepted, strict=True)] == [per_round] * rounds
        assert rows_in(url, "readings") == rounds * per_round
        assert sum(s.count for s in collectors[0].resolve_series(Filters())) == rounds * per_round
    finally:
        for c in collectors:
            c.close()


# ---------------------------------------------------------------- the store path's two ways


def mixed(
    seq: int, t0: int, extra: Sequence[list[object]] = (), *, text: bool | None = None
) -> PreparedBatch:
    """A batch of every value shape: floats, ints at the counter's bounds, bools, text (with
    and without NUL), a composite; readings `t0`, `t0` + 1 s, ... `text`: only the text
    readings (True) or only the others (False)."""
    values: list[list[object]] = [
        ["temp", "temperature", 21.5, "C"], ["neg", "gauge", -1.25e-300, None],
        ["big", "counter", 2**63 - 1, None], ["low", "counter", 0, None],
        ["door", "state", True, None], ["lamp", "state", False, None],
        ["note", "text", "a\tb\\c\nd", None], ["nul", "text", "x\x00y", None],
        ["pos", "gps", {"lat": 1.5, "lon": -2.25}, None],
    ]  # fmt: skip
    readings = [
        [sensor, kind, t0 + k * S, v, unit, None]
        for k, (sensor, kind, v, unit) in enumerate(values)
        if text is None or text == (kind == "text")
    ]
    return INGEST.prepare(seq, [*readings, *extra], T0)


def stored_rows(url: str, dev: int) -> dict[tuple[str, str, int], tuple[object, ...]]:
    """(sensor, field, ts) -> (i, f, t, b) of every reading of device `dev`."""
    return {
        (str(r[0]), str(r[1]), int(str(r[2]))): tuple(r[3:])
        for r in sql(
            url,
            "SELECT s.sensor, s.field, r.ts, r.i, r.f, r.t, r.b FROM readings r "
            "JOIN series s ON s.id = r.series_id WHERE s.device_id = %s",
            dev,
        )
    }


def series_state(url: str) -> dict[tuple[str, str], tuple[object, ...]]:
    """(sensor, field) -> (first_ts, count, latest ts, i, f, t, b)."""
    return {
        (str(r[0]), str(r[1])): tuple(r[2:])
        for r in sql(
            url,
            "SELECT s.sensor, s.field, s.first_ts, s.count, l.ts, l.i, l.f, l.t, l.b "
            "FROM series s LEFT JOIN latest l ON l.series_id = s.id",
        )
    }


def test_new_readings_take_the_row_count_path_and_duplicates_the_exact_one(
    pg: PostgresStorage, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group whose readings are all new is stored without RETURNING (the move's row count
    equals the rows staged) and its series and latest rows come from SQL; a group holding
    duplicates no resend announces (a reading stored before under a new seq, the same
    reading twice in one batch) falls back to the exact path. Both give exact counts and
    the same stored rows, series stats and latest values as storing each reading once."""
    from collector.storage.postgres import ingest

    exact: list[int] = []
    real = ingest._Rows._insert_exact

    def counted(self: ingest._Rows, conn: schema.Conn) -> list[bool]:
        exact.append(self.count)
        return real(self, conn)

    binary: list[bool] = []
    real_copy = ingest._numeric_copy

    def spied(*args: list[int]) -> bytes | None:
        buffer = real_copy(*args)  # type: ignore[arg-type]
        binary.append(buffer is not None)
        return buffer

    monkeypatch.setattr(ingest._Rows, "_insert_exact", counted)
    monkeypatch.setattr(ingest, "_numeric_copy", spied)
    dev = pg.add_device("d", T0)[0].id
    other = pg.add_device("e", T0)[0].id
    # All new, numbers only (the binary COPY), then text (row by row): no fallback.
    numbers = INGEST.prepare(
        1, [["temp", "temperature", T0 + k * S, 20.0 + k / 8, "C", None] for k in range(5)], T0
    )
    out = pg.store([(dev, mixed(1, T0, text=False)), (other, numbers)])
    assert [(o.accepted, o.duplicate) for o in out.outcomes] == [(7, 0), (5, 0)]
    out = pg.store([(dev, mixed(2, T0, text=True))])
    assert [(o.accepted, o.duplicate) for o in out.outcomes] == [(2, 0)]
    assert exact == []
    assert binary == [True, False]
    first = stored_rows(url, dev)
    assert first[("big", "", T0 + 2 * S)] == (2**63 - 1, None, None, None)
    assert first[("low", "", T0 + 3 * S)] == (0, None, None, None)
    assert first[("neg", "", T0 + S)] == (None, -1.25e-300, None, None)
    assert first[("door", "", T0 + 4 * S)] == (1, None, None, None)
    assert first[("lamp", "", T0 + 5 * S)] == (0, None, None, None)
    assert first[("note", "", T0 + 6 * S)] == (None, None, "a\tb\\c\nd", None)
    assert first[("nul", "", T0 + 7 * S)] == (None, None, None, b"x\x00y")
    assert first[("pos", "lon", T0 + 8 * S)] == (None, -2.25, None, None)
    assert len(first) == 10
    assert rows_in(url, "readings") == 10 + 5
    assert sql(
        url,
        "SELECT s.first_ts, s.count, l.ts, l.f FROM series s JOIN latest l "
        "ON l.series_id = s.id WHERE s.device_id = %s",
        other,
    ) == [(T0, 5, T0 + 4 * S, 20.5)]
    state = series_state(url)
    assert state[("big", "")] == (T0 + 2 * S, 1, T0 + 2 * S, 2**63 - 1, None, None, None)

    # Seq 3 of `dev`: not a resend, yet most of it was stored (seq 1's and 2's), one
    # reading comes twice (the first one counts) and one is new and latest.
    again = mixed(
        3,
        T0,
        [
            ["temp", "temperature", T0 + 100 * S, 30.0, "C", None],
            ["temp", "temperature", T0 + 100 * S, 31.0, "C", None],
            ["neg", "gauge", T0 - 5 * S, 7.0, None, None],
        ],
    )
    more = INGEST.prepare(2, [["temp", "temperature", T0 + 9 * S, 1.0, "C", None]], T0)
    out = pg.store([(dev, again), (other, more)])
    assert [(o.accepted, o.duplicate) for o in out.outcomes] == [(2, 10), (1, 0)]
    assert exact == [again.row_count + more.row_count]
    rows = stored_rows(url, dev)
    assert len(rows) == 10 + 2
    assert rows_in(url, "readings") == 15 + 3
    assert rows[("temp", "", T0 + 100 * S)] == (None, 30.0, None, None)
    assert rows[("neg", "", T0 - 5 * S)] == (None, 7.0, None, None)
    state = series_state(url)
    by_dev = {
        int(str(r[0])): tuple(r[1:])
        for r in sql(
            url,
            "SELECT s.device_id, s.first_ts, s.count, l.ts, l.f FROM series s "
            "JOIN latest l ON l.series_id = s.id WHERE s.sensor = 'temp'",
        )
    }
    assert by_dev == {
        dev: (T0, 2, T0 + 100 * S, 30.0),
        other: (T0, 6, T0 + 9 * S, 1.0),
    }
    assert sql(
        url,
        "SELECT s.first_ts, s.count, l.ts, l.i FROM series s JOIN latest l "
        "ON l.series_id = s.id WHERE s.sensor = 'neg'",
    ) == [(T0 - 5 * S, 2, T0 + S, None)]  # latest stays the newer reading

    # A resend (seq 3 again) goes the exact way at once: nothing new, nothing stored twice.
    exact.clear()
    out = pg.store([(dev, again)])
    assert [(o.accepted, o.duplicate, o.resend) for o in out.outcomes] == [(0, 12, True)]
    assert exact == [again.row_count]
    assert stored_rows(url, dev) == rows
    assert rows_in(url, "readings") == 15 + 3
    assert series_state(url) == state
