"""Backend conformance: every storage backend keeps the promises of collector.storage.interface.

Written against the `Storage` interface only and run once per backend through the `backend`
fixture: SQLite on a real file, PostgreSQL on a throwaway database of the local server
(tests/storage/pgserver.py: skipped without one, failing when CI=true). Each backend also
says how to "settle" its storage: move everything it holds into its long-term form (SQLite:
run compaction until nothing is left; PostgreSQL: nothing to do), so that resends, late
readings and scans are checked both before and after that move.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.ingest.prepare import Ingest
from collector.storage.interface import (
    Agg,
    DeviceError,
    Filters,
    Order,
    PreparedBatch,
    RejectedFilter,
    Session,
    Storage,
)
from collector.storage.sqlite import compactor, store
from collector.storage.sqlite.backend import SQLiteStorage
from schemas.kinds import KindSpec
from tests.storage.pgserver import throwaway_database

T0 = 1_700_000_000 * 10**9  # a realistic epoch, in ns
S = 10**9
DAY = 86_400 * S


@dataclass
class Backend:
    storage: Storage
    settle: Callable[[int], None]  # move everything into long-term storage, as of now_ns
    db: str = ""  # what `--db` names it: a path or a URL (for tests of the commands)
    cleanup: ExitStack | None = None
    # New readings land in a head that maintenance moves on (SQLite); PostgreSQL has none.
    has_head: bool = True


def _sqlite(path: Path) -> Backend:
    storage = SQLiteStorage(path / "t.db")

    def settle(now_ns: int) -> None:
        conn = store.connect(path / "t.db")
        try:
            while compactor.maintenance(conn, now_ns):
                pass
        finally:
            conn.close()

    return Backend(storage, settle, str(path / "t.db"))


def _postgres(path: Path) -> Backend:
    from collector.storage.postgres.backend import PostgresStorage

    stack = ExitStack()
    url = stack.enter_context(throwaway_database())
    try:
        storage = PostgresStorage(url, now_ns=T0)
    except BaseException:
        stack.close()
        raise

    def settle(now_ns: int) -> None:
        # Nothing moves later in PostgreSQL: a reading is in its final place once stored.
        pass

    return Backend(storage, settle, url, stack, has_head=False)


BACKENDS: dict[str, Callable[[Path], Backend]] = {"sqlite": _sqlite, "postgres": _postgres}


@contextmanager
def open_backend(name: str, path: Path) -> Iterator[Backend]:
    b = BACKENDS[name](path)
    try:
        yield b
    finally:
        b.storage.close()
        if b.cleanup is not None:
            b.cleanup.close()


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with open_backend(request.param, tmp_path) as b:
        yield b


INGEST = Ingest.from_kinds()


def batch(seq: int, readings: list[tuple[str, int, int]], received_ns: int = T0) -> PreparedBatch:
    """(sensor, ts_ns, value) counters -> a validated batch, as ingest builds it."""
    return INGEST.prepare(
        seq,
        [[sensor, "counter", ts, value, None, None] for sensor, ts, value in readings],
        received_ns,
    )


def device(storage: Storage, name: str = "dev-1") -> int:
    d, _token = storage.add_device(name, T0)
    return d.id


def everything(storage: Storage) -> list[tuple[str, int, object]]:
    """(sensor, ts, value) of every stored reading, by (sensor, ts)."""
    series = {s.id: s for s in storage.resolve_series(Filters())}
    rows = storage.read_range(list(series), None, None)
    return sorted((series[sid].sensor, ts, v) for sid, ts, v in rows)


# ---------------------------------------------------------------- exactly once, resends


def test_a_batch_is_stored_once_and_a_resend_is_all_duplicates(backend: Backend) -> None:
    s = backend.storage
    dev = device(s)
    b = batch(1, [("a", T0 + i * S, i) for i in range(50)])
    first = s.store([(Session(dev), b)])
    again = s.store([(Session(dev), b)])
    assert first.outcomes[0].accepted == 50 and first.outcomes[0].duplicate == 0
    assert again.outcomes[0].resend and again.outcomes[0].accepted == 0
    assert again.outcomes[0].duplicate == 50
    assert everything(s) == [("a", T0 + i * S, i) for i in range(50)]


def test_a_resend_with_readings_never_stored_stores_exactly_those(backend: Backend) -> None:
    s = backend.storage
    dev = device(s)
    s.store([(dev, batch(1, [("a", T0 + i * S, i) for i in range(0, 20, 2)]))])
    out = s.store([(dev, batch(1, [("a", T0 + i * S, i) for i in range(20)]))])
    assert out.outcomes[0].resend
    assert (out.outcomes[0].accepted, out.outcomes[0].duplicate) == (10, 10)
    assert everything(s) == [("a", T0 + i * S, i) for i in range(20)]


def test_resends_after_settling_are_still_duplicates(backend: Backend) -> None:
    s = backend.storage
    dev = device(s)
    readings = [("a", T0 + i * S, i) for i in range(0, 600, 3)]
    s.store([(dev, batch(1, readings))])
    backend.settle(T0 + 2 * DAY)
    out = s.store([(dev, batch(1, readings)), (dev, batch(2, readings))])
    assert [(o.accepted, o.duplicate) for o in out.outcomes] == [(0, 200), (0, 200)]
    assert everything(s) == sorted(readings)


def test_late_readings_land_once_beside_settled_ones(backend: Backend) -> None:
    s = backend.storage
    dev = device(s)
    s.store([(dev, batch(1, [("a", T0 + i * S, i) for i in range(0, 600, 2)]))])
    backend.settle(T0 + 2 * DAY)
    late = [("a", T0 + i * S, i) for i in range(1, 600, 2)]
    out = s.store([(dev, batch(2, late, received_ns=T0 + DAY))])
    assert (out.outcomes[0].accepted, out.outcomes[0].duplicate) == (300, 0)
    backend.settle(T0 + 3 * DAY)
    assert everything(s) == [("a", T0 + i * S, i) for i in range(600)]


def test_a_group_reports_per_batch_and_stored_batches(backend: Backend) -> None:
    s = backend.storage
    dev = device(s)
    b1, b2 = batch(1, [("a", T0, 1)]), batch(2, [("a", T0 + S, 2)])
    out = s.store([(dev, b1), (dev, b2), (dev, b1)])
    assert [(o.accepted, o.duplicate, o.resend) for o in out.outcomes] == [
        (1, 0, False),
        (1, 0, False),
        (0, 1, True),
    ]
    assert out.stored == [b1, b2]


# ---------------------------------------------------------------- dead letters


def test_invalid_readings_become_dead_letters_once(backend: Backend) -> None:
    s = backend.storage
    dev = device(s)
    b = INGEST.prepare(
        1,
        [["a", "counter", T0, 1, None, None], ["h", "humidity", T0, 150.0, None, None]],
        T0,
    )
    out = s.store([(dev, b)])
    s.store([(dev, b)])  # a resend keeps its rejects once
    assert (out.outcomes[0].accepted, out.outcomes[0].duplicate) == (1, 0)
    rows = s.rejected()
    assert len(rows) == 1
    assert rows[0]["device"] == "dev-1" and rows[0]["seq"] == 1 and rows[0]["idx"] == 1
    assert rows[0]["replayed"] is None
    assert s.rejected(RejectedFilter(devices=("other",))) == []


def test_replay_stores_what_now_passes_exactly_once(backend: Backend) -> None:
    s = backend.storage
    dev = device(s)
    unknown = [["w", "wind_gust", T0 + i * S, float(i), "m/s", None] for i in range(3)]
    s.store([(dev, INGEST.prepare(1, unknown, T0))])
    assert len(s.rejected(RejectedFilter(pending_only=True))) == 3 and everything(s) == []
    fixed = Ingest.from_kinds([KindSpec("wind_gust", "number", free_unit=True)])
    first = s.replay_rejected(fixed, now_ns=T0 + S)
    second = s.replay_rejected(fixed, now_ns=T0 + 2 * S)
    assert (first.checked, first.replayed, first.still_rejected) == (3, 3, 0)
    assert second.checked == 0
    assert everything(s) == [("w", T0 + i * S, float(i)) for i in range(3)]
    assert s.rejected(RejectedFilter(pending_only=True)) == []


# ---------------------------------------------------------------- latest, aggregates, tail


def test_latest_is_each_series_newest_reading_even_after_late_ones(backend: Backend) -> None:
    s = backend.storage
    dev = device(s)
    s.store([(dev, batch(1, [("a", T0 + 5 * S, 5), ("b", T0 + 7 * S, 7)]))])
    s.store([(dev, batch(2, [("a", T0 + 1 * S, 1)]))])  # late: older than a's newest
    ids = {x.sensor: x.id for x in s.resolve_series(Filters())}
    latest = {sid: (ts, v) for sid, ts, v in s.latest()}
    assert latest == {ids["a"]: (T0 + 5 * S, 5), ids["b"]: (T0 + 7 * S, 7)}
    assert [sid for sid, _, _ in s.latest([ids["b"]])] == [ids["b"]]


def test_a_tail_shows_each_new_reading_once(backend: Backend) -> None:
    s = backend.storage
    dev = device(s)
    s.store([(dev, batch(1, [("a", T0, 0)]))])
    cursor = s.tail(Filters(sensors=("a",)))
    try:
        assert cursor.poll() == []
        s.store([(dev, batch(2, [("a", T0 + S, 1), ("b", T0 + S, 1)]))])
        rows = cursor.poll()
        assert [(r["sensor"], r["ts_ns"]) for r in rows] == [("a", T0 + S)]
        assert cursor.poll() == []
    finally:
        cursor.close()


# ---------------------------------------------------------------- text, tags, globs

ODD_TEXT = ("caf\u00e9 \u2603 \U0001f600", "nul\x00inside", "quote ' \" \\ ;--", "", " ")


def test_text_units_and_tags_are_stored_exactly_nul_included(backend: Backend) -> None:
    """The contract for odd text: every value, unit and tag comes back exactly as sent,
    NUL characters included (SQLite keeps them as they are; PostgreSQL, whose text type
    cannot hold NUL, keeps such a value's UTF-8 bytes beside it). Numbers keep their type."""
    s = backend.storage
    dev = device(s)
    tags = {"k": "v\x00w", "quote": "'\";", "snow": "\u2603"}
    readings: list[object] = [
        ["t", "text", T0 + i * S, text, None, tags] for i, text in enumerate(ODD_TEXT)
    ]
    readings += [
        ["g", "gauge", T0, 21.0, "u\x00\u00b5", None],
        ["c", "counter", T0, 21, None, None],
        ["st", "state", T0, True, None, None],
    ]
    out = s.store([(dev, INGEST.prepare(1, readings, T0))])
    assert out.outcomes[0].accepted == len(readings)
    series = {x.sensor: x for x in s.resolve_series(Filters())}
    assert series["t"].tags == tags and series["g"].unit == "u\x00\u00b5"
    backend.settle(T0 + 2 * DAY)
    got = {(series_id, ts): v for series_id, ts, v in s.read_range(list(_ids(s)), None, None)}
    texts = [got[(series["t"].id, T0 + i * S)] for i in range(len(ODD_TEXT))]
    assert texts == list(ODD_TEXT)
    assert got[(series["c"].id, T0)] == 21 and type(got[(series["c"].id, T0)]) is int
    assert got[(series["g"].id, T0)] == 21.0
    assert got[(series["st"].id, T0)] == 1
    # (Filtering on a tag value that holds NUL is not part of the contract: SQLite's
    # json_each comparison stops at the NUL.)
    assert [x.sensor for x in s.resolve_series(Filters(tags=(("snow", "\u2603"),)))] == ["t"]
    assert s.resolve_series(Filters(tags=(("quote", "'"),))) == []
    assert {sid: v for sid, _, v in s.latest([series["t"].id])} == {series["t"].id: ODD_TEXT[-1]}
    again = s.store([(dev, INGEST.prepare(1, readings, T0))])
    assert again.outcomes[0].duplicate == len(readings)  # the same series, not new ones


def test_dead_letters_keep_odd_text(backend: Backend) -> None:
    s = backend.storage
    dev = device(s)
    bad = ["h", "humidity", T0, 150.0, None, {"k": "nul\x00 \u2603"}]
    s.store([(dev, INGEST.prepare(1, [bad], T0))])
    (row,) = s.rejected()
    assert json.loads(str(row["reading"])) == bad


def test_globs_select_devices_and_sensors(backend: Backend) -> None:
    s = backend.storage
    for name in ("dev-1", "dev-2", "dev-3", "other.x"):
        dev = device(s, name)
        s.store([(dev, batch(1, [("a.1", T0, 1), ("b", T0, 2), ("a.2", T0, 3)]))])

    def names(f: Filters) -> list[tuple[str, str]]:
        return [(x.device, x.sensor) for x in s.resolve_series(f)]

    assert names(Filters(devices=("dev-[12]",), sensors=("a*",))) == [
        ("dev-1", "a.1"),
        ("dev-1", "a.2"),
        ("dev-2", "a.1"),
        ("dev-2", "a.2"),
    ]
    assert names(Filters(devices=("dev-[^12]", "*.x"), sensors=("?",))) == [
        ("dev-3", "b"),
        ("other.x", "b"),
    ]
    assert names(Filters(devices=("dev.1",))) == []  # "." is literal, not "any character"


def _ids(s: Storage) -> list[int]:
    return [x.id for x in s.resolve_series(Filters())]


# ---------------------------------------------------------------- sessions and epochs


def test_a_newer_session_fences_the_older_one(backend: Backend) -> None:
    s = backend.storage
    dev = device(s)
    old = s.open_session(dev, "spool-1", T0)
    assert old.last_seq == 0
    s.store([(Session(dev, "spool-1", old.epoch), batch(1, [("a", T0, 1)]))])
    new = s.open_session(dev, "spool-1", T0 + S)
    assert new.epoch > old.epoch and new.last_seq == 1
    out = s.store(
        [
            (Session(dev, "spool-1", old.epoch), batch(2, [("a", T0 + S, 2)])),
            (Session(dev, "spool-1", new.epoch), batch(2, [("a", T0 + 2 * S, 3)])),
        ]
    )
    assert [o.fenced for o in out.outcomes] == [True, False]
    assert out.outcomes[0].accepted == 0 and out.stored == [out.stored[0]]
    assert everything(s) == [("a", T0, 1), ("a", T0 + 2 * S, 3)]
    assert s.open_session(dev, "spool-1", T0 + 2 * S).last_seq == 2
    assert s.open_session(dev, "spool-2", T0 + 2 * S).last_seq == 0  # streams are separate


# ---------------------------------------------------------------- devices


def test_device_registry_authenticates_and_revokes(backend: Backend) -> None:
    s = backend.storage
    d, token = s.add_device("gh-1", T0)
    assert s.authenticate("gh-1", token, T0).device == d
    assert s.authenticate("gh-1", token + "x", T0).device is None
    assert s.authenticate("nobody", token, T0).device is None
    with pytest.raises(DeviceError):
        s.add_device("gh-1", T0)
    with pytest.raises(DeviceError):
        s.add_device("bad name!", T0)
    revoked = s.revoke_device("gh-1", T0 + S)
    assert revoked.revoked_ns == T0 + S
    assert s.revoke_device("gh-1", T0 + 2 * S).revoked_ns == T0 + S
    refused = s.authenticate("gh-1", token, T0)
    assert refused.device is None and "revoked" in refused.reason
    with pytest.raises(DeviceError):
        s.revoke_device("nobody", T0)
    new = s.authenticate("auto-1", "tok", T0, allow_unknown=True)
    assert new.registered and new.device is not None
    assert [x.name for x in s.list_devices()] == ["auto-1", "gh-1"]


def test_spool_drops_reported_at_session_open_are_counted(backend: Backend) -> None:
    s = backend.storage
    dev = device(s)
    s.open_session(dev, "", T0, spool_dropped=5)
    s.open_session(dev, "", T0, spool_dropped=2)
    assert [x.spool_dropped for x in s.list_devices()] == [7]


# ---------------------------------------------------------------- retention


def test_retention_keeps_every_reading_at_or_after_the_cutoff(backend: Backend) -> None:
    s = backend.storage
    dev = device(s)
    old = [("a", T0 + i * 60 * S, i) for i in range(120)]  # two hours, two days back
    new = [("a", T0 + 2 * DAY + i * 60 * S, 1000 + i) for i in range(120)]
    s.store([(dev, batch(1, old)), (dev, batch(2, new))])
    backend.settle(T0 + 3 * DAY)
    cutoff = T0 + 2 * DAY + 30 * 60 * S
    s.apply_retention(cutoff)
    left = everything(s)
    assert [r for r in left if r[1] >= cutoff] == [r for r in sorted(new) if r[1] >= cutoff]
    assert not [r for r in left if r[1] < cutoff - DAY]  # more than a day old: gone


# ---------------------------------------------------------------- scans vs a reference model

SENSORS = ("a", "b", "c")
ORDERS: tuple[Order, ...] = ("asc", "desc")
AGGS: dict[Agg, Callable[[list[int]], int]] = {"count": len, "sum": sum, "min": min, "max": max}
# (sensor, offset in s, value); offsets span a few compaction windows and one hour boundary
reading_st = st.tuples(st.sampled_from(SENSORS), st.integers(0, 4_000), st.integers(0, 1_000))
step_st = st.one_of(
    st.tuples(st.just("batch"), st.lists(reading_st, max_size=40)),
    st.tuples(st.just("resend"), st.integers(0, 10)),
    st.tuples(st.just("settle"), st.integers(0, 2)),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(step_st, min_size=1, max_size=12), data=st.data())
@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_scans_and_aggregates_match_a_reference_model(
    name: str, steps: list[tuple[str, object]], data: st.DataObject
) -> None:
    model: dict[tuple[str, int], int] = {}  # (sensor, ts) -> first stored value
    sent: list[PreparedBatch] = []
    with tempfile.TemporaryDirectory() as tmp, open_backend(name, Path(tmp)) as b:
        s = b.storage
        dev = device(s)
        for kind, arg in steps:
            if kind == "batch":
                assert isinstance(arg, list)
                rows = [(sensor, T0 + off * S, v) for sensor, off, v in arg]
                sent.append(batch(len(sent) + 1, rows))
                s.store([(dev, sent[-1])])
                for sensor, ts, v in rows:
                    model.setdefault((sensor, ts), v)  # the first stored value wins
            elif kind == "resend" and sent:
                assert isinstance(arg, int)
                out = s.store([(dev, sent[arg % len(sent)])])
                assert out.outcomes[0].accepted == 0
            elif kind == "settle":
                assert isinstance(arg, int)
                b.settle(T0 + 4_000 * S + arg * DAY)
        expected = sorted((sensor, ts, v) for (sensor, ts), v in model.items())
        assert everything(s) == expected
        series = {x.id: x.sensor for x in s.resolve_series(Filters())}
        ids = sorted(series)
        lo = T0 + data.draw(st.integers(0, 4_000), label="since") * S
        hi = lo + data.draw(st.integers(0, 4_000), label="span") * S
        order = data.draw(st.sampled_from(ORDERS), label="order")
        got = [(series[sid], ts, v) for sid, ts, v in s.read_range(ids, lo, hi, order=order)]
        want = sorted(
            ((sensor, ts, v) for sensor, ts, v in expected if lo <= ts < hi),
            key=lambda r: (r[1], _sid(series, r[0])),
            reverse=order == "desc",
        )
        assert got == want
        every = data.draw(st.sampled_from([60, 600, 3_600]), label="every") * S
        for agg, fn in AGGS.items():
            buckets: dict[tuple[str, int], list[int]] = {}
            for sensor, ts, v in expected:
                buckets.setdefault((sensor, ts // every * every), []).append(v)
            want_agg = {k: fn(vs) for k, vs in buckets.items()}
            got_agg = {
                (series[sid], start): value
                for sid, start, value in s.aggregate(ids, None, None, every, agg)
            }
            assert got_agg == want_agg, agg


def _sid(series: dict[int, str], sensor: str) -> int:
    return next(sid for sid, name in series.items() if name == sensor)


# ---------------------------------------------------------------- the writer's session


def test_a_write_session_stores_like_the_storage_and_fences(backend: Backend) -> None:
    s = backend.storage
    _, token = s.add_device("dev-1", T0)
    ws = s.writer_session()
    try:
        auth = ws.authenticate("dev-1", token, T0)
        assert auth.device is not None and ws.authenticate("dev-1", "wrong", T0).device is None
        old = ws.open_session(auth.device.id, "spool-a", T0)
        new = ws.open_session(auth.device.id, "spool-a", T0 + S, spool_dropped=4)
        assert new.epoch > old.epoch and new.last_seq == 0
        out = ws.store(
            [
                (Session(auth.device.id, "spool-a", new.epoch), batch(1, [("a", T0, 1)])),
                (Session(auth.device.id, "spool-a", old.epoch), batch(2, [("a", T0 + S, 2)])),
            ]
        )
        assert [o.fenced for o in out.outcomes] == [False, True]
        assert [b.seq for b in out.stored] == [1]
        assert ws.maintain(T0) is False and ws.maintains is False  # no hook given
    finally:
        ws.close()
    assert everything(s) == [("a", T0, 1)]
    assert [d.spool_dropped for d in s.list_devices()] == [4]


def test_a_maintenance_hook_runs_through_the_write_session(backend: Backend) -> None:
    calls: list[int] = []
    ws = backend.storage.writer_session(maintenance=lambda _conn, now: calls.append(now))
    try:
        assert ws.maintains and ws.maintain(T0) is False and calls == [T0]
    finally:
        ws.close()


def test_without_background_work_the_checks_are_no_ops(backend: Backend) -> None:
    s = backend.storage
    s.check_background()
    assert s.background_restarts() == 0


# ---------------------------------------------------------------- readers of the registry


def test_devices_are_found_by_token_and_by_forward_key(backend: Backend) -> None:
    s = backend.storage
    dev, token = s.add_device("dev-1", T0)
    assert s.device_named_by_token(token) == "dev-1"
    assert s.device_named_by_token("not-a-token") is None
    found = s.forward_key("dev-1")
    assert found is not None and found[0].id == dev.id
    assert found[1] == hashlib.sha256(token.encode()).hexdigest()
    assert s.forward_key("nobody") is None and s.forward_key("bad name") is None
    s.revoke_device("dev-1", T0 + S)
    revoked = s.forward_key("dev-1")
    assert revoked is not None and revoked[0].revoked_ns == T0 + S
    assert s.authenticate("dev-1", token, T0 + 2 * S).device is None


# ---------------------------------------------------------------- read-side additions


def test_rejected_pages_after_a_key(backend: Backend) -> None:
    s = backend.storage
    dev = device(s)
    bad = [["h", "humidity", T0 + i * S, 150.0, None, None] for i in range(5)]
    s.store([(dev, INGEST.prepare(1, bad, T0))])
    rows = s.rejected()
    assert len(rows) == 5
    key = (int(str(rows[1]["received_ns"])), int(str(rows[1]["id"])))
    assert [r["id"] for r in s.rejected(RejectedFilter(after=key))] == [r["id"] for r in rows[2:]]
    assert [r["id"] for r in s.rejected(RejectedFilter(after=key, order="desc"))] == [rows[0]["id"]]


def test_rejected_filters_combine(backend: Backend) -> None:
    """Device globs, codes, the receive-time window, order, limit and pending-only narrow the
    listing alike on every backend (one query builder, each backend's own glob matching)."""
    s = backend.storage
    bad = [["h", "humidity", T0, 150.0, None, None], ["w", "wind_gust", T0, 1.0, "m/s", None]]
    s.store([(device(s, "dev-1"), INGEST.prepare(1, bad, T0))])
    s.store([(device(s, "dev-2"), INGEST.prepare(1, bad, T0 + 10 * S))])
    rows = s.rejected()
    assert [(r["device"], r["idx"]) for r in rows] == [
        ("dev-1", 0),
        ("dev-1", 1),
        ("dev-2", 0),
        ("dev-2", 1),
    ]
    humid, wind = str(rows[0]["code"]), str(rows[1]["code"])
    assert humid != wind

    def listed(which: RejectedFilter) -> list[tuple[object, object]]:
        return [(r["device"], r["idx"]) for r in s.rejected(which)]

    assert listed(RejectedFilter(codes=(wind,))) == [("dev-1", 1), ("dev-2", 1)]
    assert listed(RejectedFilter(codes=(humid, wind), devices=("dev-2",))) == [
        ("dev-2", 0),
        ("dev-2", 1),
    ]
    assert listed(RejectedFilter(devices=("dev-?", "none"), since_ns=T0 + S)) == [
        ("dev-2", 0),
        ("dev-2", 1),
    ]
    assert listed(RejectedFilter(devices=("*-[1]",), until_ns=T0 + S)) == [
        ("dev-1", 0),
        ("dev-1", 1),
    ]
    assert listed(RejectedFilter(since_ns=T0 + 10 * S, until_ns=T0 + 10 * S)) == []
    assert listed(RejectedFilter(order="desc", limit=3, codes=(humid,))) == [
        ("dev-2", 0),
        ("dev-1", 0),
    ]
    assert listed(RejectedFilter(pending_only=True, limit=1)) == [("dev-1", 0)]


def test_a_rewound_tail_shows_stored_readings_after_the_key(backend: Backend) -> None:
    s = backend.storage
    dev = device(s)
    s.store([(dev, batch(1, [("a", T0 + i * S, i) for i in range(4)]))])
    (sid,) = [x.id for x in s.resolve_series(Filters())]
    cursor = s.tail(Filters())
    try:
        assert cursor.poll() == []
        cursor.rewind(T0 + S, sid)
        assert [r["ts_ns"] for r in cursor.poll()] == [T0 + 2 * S, T0 + 3 * S]
        assert cursor.poll() == []
    finally:
        cursor.close()


def test_stats_count_what_is_stored(backend: Backend) -> None:
    s = backend.storage
    dev = device(s)
    before = s.stats()
    s.store([(dev, batch(1, [("a", T0 + i * S, i) for i in range(10)]))])
    after = s.stats()
    if backend.has_head:
        assert after.head_rows + after.blocks >= before.head_rows + before.blocks + 1
    else:  # nothing waits to be moved: the gauges say so
        assert (after.head_rows, after.head_oldest_ns, after.small_blocks) == (0, None, 0)
    assert after.db_bytes > 0
