"""Hostile input: many thousands of malformed frames over many connections.

Frames come from `hostile.py` (seeded): random bytes, deep nesting, size bombs, wrong types,
huge integers, unknown message types, mutated valid batches, empty and trailing-garbage
frames, and well-formed batches of invalid readings (NaN/inf, out of range, bad names...).
Each connection authenticates, sends up to `BAD_FRAME_BUDGET` bad frames plus the batches
of invalid readings, pipelined, and checks that every one is answered: ERROR for each bad
frame, ACK for each batch (accounting for every reading as accepted, duplicate or rejected).
Some connections end by breaking the protocol for good (one bad frame past the budget, an
oversized declared length, a frame cut short by EOF, garbage before HELLO) and must be
answered with a fatal ERROR and closed.

Meanwhile a well-behaved client streams on its own connection: it must never be cut off and
lose nothing, and the collector's RSS may not grow by more than RSS_GROWTH_MAX_BYTES (a leak
check with a generous bound, not a performance figure).
"""

from __future__ import annotations

import random
import socket
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from schemas import errors, wire
from tests.collector.wireclient import CollectorProcess, WireClient
from tests.reliability.harness import (
    ENV,
    Streamer,
    add_devices,
    assert_exactly_once,
    integrity,
    report,
    stored,
)
from tests.reliability.hostile import closing_frames, frame, hostile_frames, valid_batch
from tests.storage.pgserver import throwaway_database

RSS_GROWTH_MAX_BYTES = 100 * 1024 * 1024
BUDGET = wire.BAD_FRAME_BUDGET
PER_CONNECTION_MAX = 40


@dataclass(frozen=True)
class HostileSize:
    frames: int


HOSTILE_SHORT = HostileSize(10_000)
HOSTILE_LONG = HostileSize(100_000)


@dataclass
class Tally:
    frames: int = 0
    connections: int = 0
    errors: int = 0
    acks: int = 0
    accepted: int = 0
    fatal_closes: int = 0
    categories: Counter[str] | None = None


def answers(c: WireClient, want_errors: int, want_acks: set[int]) -> tuple[int, list[wire.Ack]]:
    """Read until every expected answer arrived; returns (errors, acks)."""
    errs = 0
    acks: list[wire.Ack] = []
    while errs < want_errors or {a.seq for a in acks} != want_acks:
        ev = c.recv(timeout=15)
        if isinstance(ev, wire.Error):
            assert not ev.fatal, ev
            errs += 1
        elif isinstance(ev, wire.Ack):
            acks.append(ev)
        else:
            raise AssertionError(f"unexpected answer {ev!r}")
        assert errs <= want_errors, "more ERRORs than bad frames"
    return errs, acks


def expect_fatal_close(c: WireClient, code: str | None = None) -> None:
    """The next answers end in a fatal ERROR, then the collector closes the socket."""
    while True:
        ev = c.recv(timeout=15)
        if isinstance(ev, wire.ConnectionClosed):
            raise AssertionError("closed without a fatal ERROR")
        if isinstance(ev, wire.Error) and ev.fatal:
            assert code is None or ev.code == code, ev
            break
        assert isinstance(ev, wire.Error | wire.Ack), ev
    assert c.closed_by_peer(15)


def run_hostile(
    db: Path | str, port: int, token: str, size: HostileSize, rng: random.Random
) -> Tally:
    tally = Tally(categories=Counter())
    # Recent timestamps: the compactor leaves the current window alone, so stored rows can be
    # compared exactly with what the ACKs counted as accepted.
    gen = hostile_frames(rng, size.frames, seq0=1, ts0=time.time_ns())
    seq_floor = 0
    done = False
    while not done:
        with WireClient("127.0.0.1", port, timeout=15) as c:
            tally.connections += 1
            ending = rng.choices(
                ["clean", "budget", "oversized", "truncated", "prehello"], [80, 5, 5, 5, 5]
            )[0]
            if ending == "prehello":
                # Garbage instead of HELLO: each bad frame answered, then closed at the budget.
                c.send_raw(frame(b"\xc1") * (BUDGET + 1))
                for _ in range(BUDGET):
                    ev = c.recv(timeout=15)
                    assert isinstance(ev, wire.Error) and not ev.fatal, ev
                expect_fatal_close(c, errors.TOO_MANY_BAD_FRAMES)
                tally.fatal_closes += 1
                tally.frames += BUDGET + 1
                continue
            welcome = c.hello("fuzzer", token)
            assert isinstance(welcome, wire.Welcome), welcome
            seq_floor = max(seq_floor, welcome.last_seq)
            want_errors, want_acks, sent = 0, set(), []
            readings_sent: dict[int, int] = {}
            for category, data, expect in gen:
                assert tally.categories is not None
                tally.categories[category] += 1
                if expect == "ack":
                    ev = wire.decode_body(data[4:])
                    assert isinstance(ev, wire.Batch)
                    if ev.seq <= seq_floor:
                        continue  # a resend would be a duplicate ACK; not what is tested
                    want_acks.add(ev.seq)
                    readings_sent[ev.seq] = len(ev.readings)
                else:
                    want_errors += 1
                sent.append(data)
                if want_errors >= BUDGET or len(sent) >= PER_CONNECTION_MAX:
                    break
            else:
                done = True
            c.send_raw(b"".join(sent))
            tally.frames += len(sent)
            errs, acks = answers(c, want_errors, want_acks)
            for a in acks:
                n = readings_sent[a.seq]
                assert a.accepted + a.duplicate + len(a.rejects) == n, (a, n)
                assert all(0 <= r.index < n for r in a.rejects)
                tally.accepted += a.accepted
            if want_acks:
                seq_floor = max(seq_floor, *want_acks)
            tally.errors += errs
            tally.acks += len(acks)
            if ending == "budget":
                c.send_raw(frame(b"\xc1") * (BUDGET - want_errors + 1))
                expect_fatal_close(c, errors.TOO_MANY_BAD_FRAMES)
            elif ending == "oversized":
                c.send_raw(rng.choice(closing_frames())[1])
                expect_fatal_close(c, errors.FRAME_TOO_LARGE)
            elif ending == "truncated":
                c.send_raw(valid_batch(seq_floor + 1)[: rng.randrange(1, 30)])
                c.sock.shutdown(socket.SHUT_WR)
                assert c.closed_by_peer(15)
            if ending != "clean":
                tally.fatal_closes += 1
    return tally


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(HOSTILE_SHORT, id="short"),
        pytest.param(
            HOSTILE_LONG, id="long", marks=[pytest.mark.longform, pytest.mark.timeout(1200)]
        ),
    ],
)
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_hostile_frames_are_each_answered_and_harm_nobody_else(tmp_path, size, backend, request):
    if backend == "sqlite":
        _hostile(tmp_path / "hostile.db", size, request)
        return
    with throwaway_database() as url:
        _hostile(url, size, request)


def _hostile(db: Path | str, size: HostileSize, request: pytest.FixtureRequest) -> None:
    tokens = add_devices(db, ["fuzzer", "good"])
    with CollectorProcess(db, env=ENV) as daemon:
        assert daemon.proc is not None
        proc = psutil.Process(daemon.proc.pid)
        port = daemon.ingest[1]
        good = Streamer("good", tokens["good"], 1_000_000, [port], pace_s=0.01)
        good.start()
        rng = random.Random(11)
        # Warm up (imports, caches, first series) before the baseline RSS sample.
        warm = run_hostile(db, port, tokens["fuzzer"], HostileSize(300), rng)
        rss0 = proc.memory_info().rss
        tally = run_hostile(db, port, tokens["fuzzer"], size, rng)
        rss1 = proc.memory_info().rss
        acked_before_stop = good.acked_seq
        good.stop_flag.set()
        good.join(30)
        assert daemon.proc.poll() is None, "the collector died"
        assert good.reconnects == 0, good.last_error
        assert acked_before_stop > 0
    assert rss1 - rss0 < RSS_GROWTH_MAX_BYTES, (rss0, rss1)
    assert tally.frames >= size.frames * 0.95
    assert integrity(db) == "ok"
    # Every batch the good client got an ACK for is stored exactly once.
    assert_exactly_once(stored(db, "good"), good.expected(good.acked_seq))
    # The fuzzer's stored readings are exactly the ones its ACKs counted as accepted.
    assert stored(db, "fuzzer").total == warm.accepted + tally.accepted
    report(
        request.node.name,
        {
            "frames": tally.frames,
            "connections": tally.connections,
            "errors": tally.errors,
            "acks": tally.acks,
            "fatal_closes": tally.fatal_closes,
            "rss_before_mb": rss0 / 2**20,
            "rss_after_mb": rss1 / 2**20,
            # The writer's page cache (store.CACHE_KIB) grows with the file: dead letters.
            "db_mb": db.stat().st_size / 2**20 if isinstance(db, Path) else 0.0,
            "good_batches": good.acked_seq,
        },
    )
