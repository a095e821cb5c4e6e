"""Protocol v1.1 session rules against the real daemon: one live session per (device, stream),
streams with their own sequence, an ERROR that names the batch it answers, resends that
never hide a reading that was not stored. Real TCP, real SQLite files, real subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from agents.config import AgentConfig
from agents.spool import Spool
from agents.transport import Transport
from collector.storage.sqlite import scan, store
from schemas import errors, wire
from tests.collector.wireclient import CollectorProcess, WireClient

TS0 = 1_700_000_000_000_000_000


def reading(i: int, value: float | None = None) -> list[object]:
    return ["s/1", "gauge", TS0 + i, float(i) if value is None else value, None, None]


def stored(db: Path) -> dict[int, object]:
    """Stored readings of sensor s/1 as {ts offset: value}, in the head and in blocks alike:
    TS0 is long past, so the maintenance process may compact them before they are read."""
    conn = store.connect(db, readonly=True)
    try:
        ids = [
            int(sid)
            for (sid,) in conn.execute(f"SELECT id FROM {store.SERIES} WHERE sensor = 's/1'")
        ]
        rows = list(scan.read_range(conn, ids, None, None))
    finally:
        conn.close()
    return {int(ts) - TS0: v for _sid, ts, v in rows}


def connect(d: CollectorProcess, name: str, token: str, stream: str = "") -> WireClient:
    c = WireClient(*d.ingest)
    welcome = c.hello(name, token, stream=stream)
    assert isinstance(welcome, wire.Welcome), welcome
    return c


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[CollectorProcess]:
    with CollectorProcess(tmp_path / "t.db") as d:
        yield d


def test_newest_hello_fences_the_older_session_and_nothing_acked_is_lost(
    daemon: CollectorProcess,
) -> None:
    # Two live connections of one device (the default stream of a v1.0 agent): the older
    # sends L+2, then the newer sends L+1. Before v1.1 both were ACKed and L+1, taken for a
    # resend, was never stored.
    token = daemon.add_device("twin")
    with connect(daemon, "twin", token) as a:
        with connect(daemon, "twin", token) as b:
            assert b.proto.state is wire.State.READY
            first = a.recv()  # the older session is told at once
            assert isinstance(first, wire.Error), first
            assert (first.code, first.fatal) == (errors.SESSION_REPLACED, True)
            assert a.closed_by_peer()
            ack = b.batch(1, [reading(1)])
            assert isinstance(ack, wire.Ack) and (ack.accepted, ack.duplicate) == (1, 0)
    assert stored(daemon.db) == {1: 1.0}
    assert "session replaced device=twin" in "".join(daemon.lines)


def test_fencing_holds_across_collector_processes_sharing_one_file(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    with CollectorProcess(db) as p1, CollectorProcess(db) as p2:
        token = p1.add_device("roamer")
        with (
            connect(p1, "roamer", token, "st-1") as old,
            connect(p2, "roamer", token, "st-1") as new,
        ):
            # The older session is on another process: it learns from the stream's epoch,
            # in the transaction that would have stored its batch.
            fenced = old.batch(2, [reading(2)])
            assert isinstance(fenced, wire.Error), fenced
            assert (fenced.code, fenced.fatal, fenced.seq) == (errors.SESSION_REPLACED, True, 2)
            ack = new.batch(1, [reading(1)])
            assert isinstance(ack, wire.Ack) and ack.accepted == 1
            ack = new.batch(2, [reading(2)])
            assert isinstance(ack, wire.Ack) and ack.accepted == 1
    assert stored(db) == {1: 1.0, 2: 2.0}


def test_a_new_stream_starts_a_new_sequence(daemon: CollectorProcess) -> None:
    token = daemon.add_device("reset")
    with connect(daemon, "reset", token, "spool-a") as c:
        for seq in (1, 2, 3):
            ack = c.batch(seq, [reading(seq)])
            assert isinstance(ack, wire.Ack) and ack.accepted == 1
    # The agent lost its spool: a new stream id, seq from 1 again, new readings.
    with WireClient(*daemon.ingest) as c:
        welcome = c.hello("reset", token, stream="spool-b")
        assert isinstance(welcome, wire.Welcome)
        assert (welcome.last_seq, welcome.minor) == (0, wire.PROTOCOL_MINOR)
        ack = c.batch(1, [reading(10), reading(11)])
        assert isinstance(ack, wire.Ack) and (ack.accepted, ack.duplicate) == (2, 0)
    # The old stream keeps its own resume point.
    with WireClient(*daemon.ingest) as c:
        welcome = c.hello("reset", token, stream="spool-a")
        assert isinstance(welcome, wire.Welcome) and welcome.last_seq == 3
    assert stored(daemon.db) == {1: 1.0, 2: 2.0, 3: 3.0, 10: 10.0, 11: 11.0}


def test_a_v1_0_agent_that_restarts_at_seq_1_loses_nothing(daemon: CollectorProcess) -> None:
    # No stream id (v1.0): WELCOME says 5, but an agent that lost its state sends seq 1 with
    # new readings anyway. They were never stored, so they must not be ACKed as duplicate.
    token = daemon.add_device("old-agent")
    with connect(daemon, "old-agent", token) as c:
        ack = c.batch(5, [reading(5)])
        assert isinstance(ack, wire.Ack) and ack.accepted == 1
    with connect(daemon, "old-agent", token) as c:
        ack = c.batch(1, [reading(5), reading(6)])  # one resent, one new
        assert isinstance(ack, wire.Ack), ack
        assert (ack.accepted, ack.duplicate) == (1, 1)
    assert stored(daemon.db) == {5: 5.0, 6: 6.0}


def test_hello_with_a_malformed_stream_id_is_refused(daemon: CollectorProcess) -> None:
    token = daemon.add_device("bad-stream")
    with WireClient(*daemon.ingest) as c:
        err = c.hello("bad-stream", token, stream="has space")
        assert isinstance(err, wire.Error) and (err.code, err.fatal) == (errors.BAD_MESSAGE, True)
        assert c.closed_by_peer()


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (msgpack.packb([3, 7, 42]), errors.BAD_MESSAGE),  # readings not an array
        (b"\x93\x03\x07\x91\xc4\x01\x00", errors.MALFORMED_FRAME),  # a bin reading
        (b"\x93\x03\x07\xdc\x27\x11" + b"\xc0" * 10_001, errors.MALFORMED_FRAME),  # > 10,000
    ],
    ids=["readings-not-array", "bin-reading", "too-many-readings"],
)
def test_an_error_answering_a_bad_batch_names_its_seq(
    daemon: CollectorProcess, body: bytes, code: str
) -> None:
    token = daemon.add_device("sloppy")
    with connect(daemon, "sloppy", token) as c:
        c.send_raw(len(body).to_bytes(4, "big") + body)
        err = c.recv()
        assert isinstance(err, wire.Error), err
        assert (err.code, err.fatal, err.seq) == (code, False, 7)
        # The connection goes on: the next batch is answered as usual.
        ack = c.batch(8, [reading(8)])
        assert isinstance(ack, wire.Ack) and ack.accepted == 1


def test_the_agent_drops_a_batch_an_error_names_and_goes_on(
    daemon: CollectorProcess, tmp_path: Path
) -> None:
    token = daemon.add_device("agent-1")
    spool = Spool(tmp_path / "spool.db", max_readings=1000, policy="drop-oldest")
    # A reading the protocol cannot carry (a bin value): the collector can never accept the
    # batch that holds it. Before v1.1 the agent waited for its ACK, reconnected and resent
    # it forever, and nothing behind it was ever delivered.
    spool.put([["s/1", "gauge", TS0, b"\x00", None, None]])
    cfg = AgentConfig(
        device_id="agent-1",
        token=token,
        port=daemon.ingest[1],
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
        batch_max_readings=1,
        batch_max_delay_s=0.01,
        spool_path=tmp_path / "spool.db",
        connect_timeout_s=2.0,
    )

    async def main() -> None:
        tr = Transport(cfg, spool)
        task = asyncio.create_task(tr.run())
        try:
            await asyncio.sleep(0)
            spool.put([reading(1), reading(2)])
            tr.notify()
            async with asyncio.timeout(20):  # the batches behind the refused one arrive
                while len(spool):
                    await tr.wait_progress()
            assert tr.stats.batches_dropped == 1 and tr.stats.disconnects == 0
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    try:
        asyncio.run(main())
        stats = spool.stats()
        assert (stats.dropped_total, stats.dropped_unreported) == (1, 1)
    finally:
        spool.close()
    assert stored(daemon.db) == {1: 1.0, 2: 2.0}


def test_a_new_spool_is_a_new_stream(tmp_path: Path) -> None:
    a = Spool(tmp_path / "a.db", max_readings=10, policy="drop-oldest")
    b = Spool(tmp_path / "b.db", max_readings=10, policy="drop-oldest")
    try:
        assert wire.STREAM_ID_RE.match(a.stream_id) and len(a.stream_id) == 32
        assert a.stream_id != b.stream_id
    finally:
        a.close()
        b.close()
    again = Spool(tmp_path / "a.db", max_readings=10, policy="drop-oldest")
    try:
        assert again.stream_id == a.stream_id  # kept with the spool
    finally:
        again.close()


def test_a_spool_from_before_streams_keeps_the_default_stream(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE readings (id INTEGER PRIMARY KEY, seq INTEGER, body BLOB NOT NULL);"
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
        "INSERT INTO meta VALUES ('next_seq', 42);"
    )
    conn.close()
    spool = Spool(path, max_readings=10, policy="drop-oldest")
    try:
        assert spool.stream_id == "" and spool.stats().next_seq == 42
    finally:
        spool.close()


def test_an_ack_of_many_rejects_fits_whatever_the_frame_limit(tmp_path: Path) -> None:
    # 10,000 invalid readings in a 64 KiB frame: the full ACK is over 1 MiB, over the
    # collector's own 64 KiB limit even when shortened. Frames the collector sends may be
    # up to 1 MiB (docs/protocol.md §8), so the ACK still goes out, every reject listed.
    with CollectorProcess(tmp_path / "t.db", "--max-frame-bytes", "65536") as d:
        token = d.add_device("noisy")
        with connect(d, "noisy", token) as c:
            ack = c.batch(1, [None] * 10_000, timeout=30)
            assert isinstance(ack, wire.Ack), ack
            assert (ack.accepted, len(ack.rejects)) == (0, 10_000)
            assert {r.code for r in ack.rejects} == {"not_a_reading"}
            assert [r.index for r in ack.rejects] == list(range(10_000))
