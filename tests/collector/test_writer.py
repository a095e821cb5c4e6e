"""collector.ingest.writer against a real SQLite file: ack-after-commit, idempotency, group commit,
storage failures answered with RETRY, backpressure credits and the maintenance hook."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from collector.ingest.prepare import Ingest, PreparedBatch
from collector.ingest.writer import Writer, _Credits
from collector.storage.sqlite import devices, store
from collector.storage.sqlite.backend import SQLiteStorage
from collector.storage.sqlite.batchstore import BatchStore

ING = Ingest.from_kinds()
T = TypeVar("T")


def _db(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "t.db"
    store.migrate(path)
    conn = store.connect(path)
    _, token = devices.add_device(conn, "dev-1", time.time_ns())
    conn.close()
    return path, token


def _temps(seq: int, n: int, base: int = 0) -> list[object]:
    return [[f"s{i % 4}", "temperature", base + i + 1, float(i), None, None] for i in range(n)]


def _count(path: Path, sql: str = f"SELECT count(*) FROM {store.HEAD}") -> int:
    conn = store.connect(path, readonly=True)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def _device(w: Writer, token: str) -> devices.Device:
    dev = (await w.hello("dev-1", token)).auth.device
    assert dev is not None
    return dev


def test_hello_checks_token_and_revocation(tmp_path):
    path, token = _db(tmp_path)

    async def main() -> Any:
        w = Writer(SQLiteStorage(path))
        await w.start()
        try:
            ok = await w.hello("dev-1", token)
            wrong = await w.hello("dev-1", token + "x")
            unknown = await w.hello("nobody", token)
            conn = store.connect(path)
            devices.revoke_device(conn, "dev-1", time.time_ns())
            conn.close()
            revoked = await w.hello("dev-1", token)
        finally:
            await w.close()
        return ok, wrong, unknown, revoked

    ok, wrong, unknown, revoked = run(main())
    assert ok.auth.device is not None and ok.auth.device.name == "dev-1" and ok.last_seq == 0
    assert wrong.auth.device is None
    assert unknown.auth.device is None
    assert revoked.auth.device is None and revoked.auth.reason == "device revoked"


def test_allow_unknown_registers_with_presented_token(tmp_path):
    path, _ = _db(tmp_path)

    async def main() -> Any:
        w = Writer(SQLiteStorage(path), allow_unknown_devices=True)
        await w.start()
        try:
            first = await w.hello("new-dev", "secret-1")
            again = await w.hello("new-dev", "secret-1")
            other = await w.hello("new-dev", "secret-2")
        finally:
            await w.close()
        return first, again, other

    first, again, other = run(main())
    assert first.auth.registered and again.auth.device is not None
    assert other.auth.device is None


def test_ack_only_after_rows_are_committed_and_visible(tmp_path):
    path, token = _db(tmp_path)
    seen: list[int] = []

    async def main() -> Any:
        w = Writer(SQLiteStorage(path))
        await w.start()
        try:
            dev = await _device(w, token)
            fut = await w.submit(dev.id, ING.prepare(1, _temps(1, 100), time.time_ns()))
            fut.add_done_callback(lambda _: seen.append(_count(path)))
            out = await fut
        finally:
            await w.close()
        return out

    out = run(main())
    assert (out.accepted, out.duplicate, out.rejects, out.retry_after_ms) == (100, 0, (), None)
    assert seen == [100]  # a separate read connection saw the rows when the ACK was due
    conn = store.connect(path, readonly=True)
    assert conn.execute(f"SELECT last_seq FROM {store.DEVICES}").fetchone()[0] == 1
    rows = conn.execute(
        f"SELECT sensor, first_ts, last_ts, last_value, count FROM {store.SERIES} ORDER BY sensor"
    ).fetchall()
    conn.close()
    assert rows[0] == ("s0", 1, 97, 96.0, 25)


def test_resend_and_rebatched_readings_are_duplicates(tmp_path):
    path, token = _db(tmp_path)
    mixed: list[object] = [*_temps(1, 10), ["x", "humidity", 1, 101.0, None, None]]
    gps: list[object] = [["p", "gps", 5, {"lat": 1.0, "lon": 2.0}, None, None]]

    async def main() -> Any:
        w = Writer(SQLiteStorage(path))
        await w.start()
        try:
            dev = await _device(w, token)
            outs = []
            steps: list[tuple[int, list[object]]] = [
                (1, mixed),
                (1, mixed),  # the same batch again
                (2, mixed[:5] + _temps(2, 3, base=1000)),  # re-batched + 3 new
                (3, gps),
                (4, [*gps, ["p", "gps", 6, {"lat": 1.0, "lon": 2.0}, None, None]]),
            ]
            for seq, readings in steps:
                fut = await w.submit(dev.id, ING.prepare(seq, readings, time.time_ns()))
                outs.append(await fut)
            last = (await w.hello("dev-1", token)).last_seq
        finally:
            await w.close()
        return outs, last

    outs, last = run(main())
    assert [(o.accepted, o.duplicate, len(o.rejects), o.resend) for o in outs] == [
        (10, 0, 1, False),
        (0, 10, 1, True),
        (3, 5, 0, False),
        (1, 0, 0, False),
        (1, 1, 0, False),
    ]
    assert outs[1].rejects == outs[0].rejects
    assert last == 4
    assert _count(path) == 13 + 2 * 2
    assert _count(path, f"SELECT count(*) FROM {store.REJECTED}") == 1  # not stored twice
    assert _count(path, f"SELECT sum(count) FROM {store.SERIES}") == 17


def test_group_commit_coalesces_queued_batches(tmp_path):
    path, token = _db(tmp_path)
    commits: list[float] = []

    async def main() -> Any:
        w = Writer(SQLiteStorage(path), on_commit=commits.append)
        await w.start()
        try:
            dev = await _device(w, token)
            futs = [
                await w.submit(dev.id, ING.prepare(s, _temps(s, 50, base=s * 100), 0))
                for s in range(1, 201)
            ]
            outs = await asyncio.gather(*futs)
        finally:
            await w.close()
        return outs

    outs = run(main())
    assert sum(o.accepted for o in outs) == 200 * 50
    assert _count(path) == 200 * 50
    assert len(commits) < 200  # batches queued together shared a transaction


def test_storage_failure_answers_retry_then_recovers(tmp_path):
    path, token = _db(tmp_path)
    full = threading.Event()
    applied = threading.Event()

    def maintenance(conn: sqlite3.Connection, now_ns: int) -> None:
        # Stands in for a full disk: the writer's connection may not grow the file.
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages if full.is_set() else 1 << 30}")
        applied.set()

    async def wait_maintenance() -> None:
        for _ in range(2):  # a run already under way may have read the old state
            applied.clear()
            assert await asyncio.to_thread(applied.wait, 10)

    async def main() -> Any:
        w = Writer(
            SQLiteStorage(path),
            maintenance=maintenance,
            maintenance_interval_ms=10,
            retry_after_ms=250,
        )
        await w.start()
        try:
            dev = await _device(w, token)
            full.set()
            await wait_maintenance()
            failed = await (await w.submit(dev.id, ING.prepare(1, _temps(1, 5000), 0)))
            full.clear()
            await wait_maintenance()
            ok = await (await w.submit(dev.id, ING.prepare(1, _temps(1, 5000), 0)))
        finally:
            await w.close()
        return failed, ok

    failed, ok = run(main())
    assert failed.retry_after_ms == 250 and failed.accepted == 0
    assert ok.retry_after_ms is None and ok.accepted == 5000 and not ok.resend
    assert _count(path) == 5000


def test_maintenance_hook_runs_outside_ingest_transactions(tmp_path):
    path, _ = _db(tmp_path)
    calls: list[tuple[bool, int]] = []
    done = threading.Event()

    def maintenance(conn: sqlite3.Connection, now_ns: int) -> None:
        calls.append((conn.in_transaction, now_ns))
        conn.execute("BEGIN IMMEDIATE")  # left open: the writer commits it
        conn.execute(f"UPDATE {store.DEVICES} SET spool_dropped = spool_dropped + 1")
        done.set()

    async def main() -> Any:
        w = Writer(SQLiteStorage(path), maintenance=maintenance, maintenance_interval_ms=10)
        await w.start()
        try:
            await asyncio.to_thread(done.wait, 10)
        finally:
            await w.close()

    run(main())
    assert calls and calls[0][0] is False and calls[0][1] > 1_700_000_000 * 10**9
    assert _count(path, f"SELECT spool_dropped FROM {store.DEVICES}") >= 1


def test_credits_block_until_released():
    async def main() -> Any:
        c = _Credits(100)
        assert await c.acquire(80) == 80
        waiter = asyncio.create_task(c.acquire(50))
        await asyncio.sleep(0)
        assert not waiter.done()  # 80 + 50 > 100: the submitter waits (backpressure)
        c.release(80)
        assert await asyncio.wait_for(waiter, 5) == 50
        assert c.available == 50

    run(main())


def test_credits_cap_oversized_requests():
    async def main() -> Any:
        c = _Credits(10)
        assert await c.acquire(1_000) == 10  # a batch bigger than the queue still passes alone
        c.release(10)
        assert c.available == 10

    run(main())


@pytest.mark.parametrize("bad", ["", "has space", "x" * 65])
def test_device_names_are_checked(tmp_path, bad):
    path, _ = _db(tmp_path)
    conn = store.connect(path)
    with pytest.raises(devices.DeviceError):
        devices.add_device(conn, bad, 1)
    conn.close()


def test_reading_resent_after_its_window_was_compacted_is_a_duplicate(tmp_path):
    from collector.storage.sqlite import compactor

    path, token = _db(tmp_path)
    old = 1_600_000_000 * 10**9  # a long-closed window

    async def main() -> Any:
        w = Writer(
            SQLiteStorage(path), maintenance=compactor.maintenance, maintenance_interval_ms=10
        )
        await w.start()
        try:
            dev = await _device(w, token)
            reading = ["late", "gauge", old, 1.5, None, None]
            first = await (await w.submit(dev.id, ING.prepare(1, [reading], 0)))
            deadline = time.monotonic() + 30
            while _count(path, f"SELECT count(*) FROM {store.BLOCKS}") == 0:
                assert time.monotonic() < deadline, "the window was never compacted"
                await asyncio.sleep(0.02)
            newer = ["late", "gauge", old + 1, 2.5, None, None]
            again = await (await w.submit(dev.id, ING.prepare(2, [reading, newer], 0)))
        finally:
            await w.close()
        return first, again

    first, again = run(main())
    assert first.accepted == 1
    assert (again.accepted, again.duplicate) == (1, 1)
    assert _count(path, f"SELECT sum(count) FROM {store.SERIES}") == 2


def test_resend_into_a_slot_block_ending_after_later_blocks_is_a_duplicate(tmp_path):
    # A backlog's slot block (collector.storage.sqlite.compactor._run_end) can end after a block
    # that starts later (a late window of another series): the writer's horizon is the greatest
    # reading any block holds, so it still looks into the slot block for a resend.
    from collector.storage.sqlite import compactor

    path, token = _db(tmp_path)
    w_ns = compactor.WINDOW_NS
    old = 2_666_666 * 5 * w_ns  # a long-closed, slot-aligned time
    config = compactor.CompactionConfig(
        merge_ns=compactor.MERGE_NS, merge_grace_ns=86_400 * 10**9, run_windows=5
    )
    slot = [["a", "gauge", old + m * w_ns + 5, float(m), None, None] for m in range(5)]
    other = ["b", "gauge", old + 2 * w_ns + 9, 2.5, None, None]

    def compact() -> None:
        conn = store.connect(path)
        while compactor.compact_once(conn, old + 6 * w_ns, config):
            pass
        conn.close()

    async def send(seq: int, readings: Sequence[object]) -> Any:
        w = Writer(SQLiteStorage(path))
        await w.start()
        try:
            dev = await _device(w, token)
            return await (await w.submit(dev.id, ING.prepare(seq, readings, 0)))
        finally:
            await w.close()

    assert run(send(1, slot)).accepted == 5
    compact()
    assert run(send(2, [other])).accepted == 1
    compact()
    conn = store.connect(path, readonly=True)
    spans = conn.execute(
        f"SELECT start_ns - ?1, end_ns - ?1 FROM {store.BLOCKS} ORDER BY 1", (old,)
    ).fetchall()
    conn.close()
    assert spans == [(0, 5 * w_ns), (2 * w_ns, 3 * w_ns)]
    again = run(send(3, [slot[4]]))
    assert (again.accepted, again.duplicate) == (0, 1)
    assert _count(path, f"SELECT count(*) FROM {store.HEAD}") == 0


def test_stored_timestamps_reach_the_activity_hook(tmp_path):
    path, token = _db(tmp_path)
    noted: list[list[int]] = []

    async def main() -> None:
        w = Writer(SQLiteStorage(path), on_stored=lambda ts: noted.append(list(ts)))
        await w.start()
        try:
            dev = await _device(w, token)
            await (await w.submit(dev.id, ING.prepare(1, _temps(1, 3, base=100), 0)))
            await (await w.submit(dev.id, ING.prepare(1, _temps(1, 3, base=100), 0)))  # resend
        finally:
            await w.close()

    run(main())
    assert noted == [[101, 102, 103]]  # a resent batch stores nothing and notes nothing


def test_pending_maintenance_runs_back_to_back_when_idle(tmp_path):
    path, _ = _db(tmp_path)
    calls: list[float] = []
    done = threading.Event()

    def maintenance(conn: sqlite3.Connection, now_ns: int) -> bool:
        calls.append(time.monotonic())
        if len(calls) == 20:
            done.set()
        return len(calls) < 20  # more work waiting, 19 times

    async def main() -> None:
        # With nothing waiting the hook would only be asked every 60 s.
        w = Writer(SQLiteStorage(path), maintenance=maintenance, maintenance_interval_ms=60_000)
        await w.start()
        try:
            assert await asyncio.to_thread(done.wait, 30)
            await asyncio.sleep(0.2)
        finally:
            await w.close()

    run(main())
    assert len(calls) == 20  # and no 21st call: nothing was waiting any more


def test_endless_maintenance_work_does_not_starve_ingest(tmp_path):
    path, token = _db(tmp_path)
    steps: list[tuple[float, float]] = []

    def maintenance(conn: sqlite3.Connection, now_ns: int) -> bool:
        t0 = time.monotonic()
        time.sleep(0.01)
        steps.append((t0, time.monotonic()))
        return True  # always more to do

    async def main() -> list[Any]:
        w = Writer(SQLiteStorage(path), maintenance=maintenance, maintenance_interval_ms=10)
        await w.start()
        try:
            dev = await _device(w, token)
            out = []
            for s in range(1, 41):  # one at a time: each waits for the step under way
                out.append(
                    await (await w.submit(dev.id, ING.prepare(s, _temps(s, 50, s * 100), 0)))
                )
            return out
        finally:
            await w.close()

    outcomes = run(main())
    assert [o.accepted for o in outcomes] == [50] * 40
    assert _count(path) == 2000
    assert len(steps) > 10  # and the maintenance kept running meanwhile


def test_a_group_with_an_overlapping_batch_is_redone_with_its_new_series(tmp_path):
    # A group of batches is stored without a savepoint each; a batch that finds some of
    # its readings stored already makes the group roll back and be redone with savepoints.
    # A series created earlier in the group must come back with the redo (its cached id
    # from the rolled-back pass would name a series row that no longer exists).
    path, _token = _db(tmp_path)
    conn = store.connect(path)
    (dev,) = conn.execute(f"SELECT id FROM {store.DEVICES}").fetchone()
    batches = BatchStore()

    def batch(seq: int, readings: list[object]) -> tuple[int, PreparedBatch]:
        return dev, ING.prepare(seq, readings, time.time_ns())

    old = ["old", "temperature", 1, 20.5, None, None]
    first, _stored = batches.store(conn, [batch(1, [old])])
    assert [(o.accepted, o.duplicate) for o in first] == [(1, 0)]
    group = [
        batch(2, [["fresh", "temperature", 5, 21.0, None, None]]),  # a new series
        batch(3, [old, ["old", "temperature", 2, 20.75, None, None]]),  # one stored already
    ]
    outs, stored = batches.store(conn, group)
    assert [(o.accepted, o.duplicate) for o in outs] == [(1, 0), (1, 1)]
    assert [b.seq for b in stored] == [2, 3]
    # And the next group finds the redone series through the cache.
    later, _stored = batches.store(
        conn, [batch(4, [["fresh", "temperature", 6, 22.0, None, None]])]
    )
    assert [(o.accepted, o.duplicate) for o in later] == [(1, 0)]
    rows = conn.execute(
        f"SELECT s.sensor, h.ts, h.value FROM {store.HEAD} AS h "
        f"JOIN {store.SERIES} AS s ON s.id = h.series_id ORDER BY h.ts"
    ).fetchall()
    assert rows == [("old", 1, 20.5), ("old", 2, 20.75), ("fresh", 5, 21.0), ("fresh", 6, 22.0)]
    assert conn.execute(f"SELECT count(*) FROM {store.SERIES}").fetchone() == (2,)
    assert conn.execute(f"SELECT last_seq FROM {store.DEVICES}").fetchone() == (4,)
    conn.close()
