"""Security: nobody writes without a valid token, and nobody writes as someone else.

The mutual-TLS cases live in tests/reliability/test_tls.py.

Each attack pipelines BATCH frames right behind its HELLO (so a collector that read ahead
before checking the token would store them) and then asserts on the stored rows, not only on
the connection error: the attacker's readings must not exist under any device it is not,
and a refused connection stores nothing at all (no readings, no series, no dead letters).
mTLS cases live with the TLS code in tests/collector/test_certs_tls.py.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.storage.factory import open_storage
from collector.storage.interface import Filters, RejectedFilter
from schemas import errors, wire
from tests.collector.wireclient import CollectorProcess, WireClient
from tests.reliability.harness import ENV, add_devices, stored
from tests.storage.pgserver import throwaway_database


def rows(db: Path | str) -> dict[str, tuple[int, int, int]]:
    """device -> (readings, series, dead letters), through the storage interface (either
    backend: an SQLite path or a postgresql:// URL)."""
    storage = open_storage(str(db), readonly=True)
    try:
        out = {}
        for dev in storage.list_devices():
            series = storage.resolve_series(Filters(devices=(dev.name,)))
            dead = storage.rejected(RejectedFilter(devices=(dev.name,)))
            out[dev.name] = (sum(x.count for x in series), len(series), len(dead))
        return out
    finally:
        storage.close()


def payload(seq: int, sensor: str = "victim/temp") -> list[object]:
    ts = time.time_ns()
    return [
        [sensor, "temperature", ts, 21.5, "C", {"device": "victim"}],
        ["bad reading", "gauge", ts, 1.0, None, None],  # would become a dead letter
    ]


def attack_frames(device: str, token: str) -> bytes:
    hello = wire.encode(wire.Hello(device_id=device, token=token))
    return hello + b"".join(wire.encode(wire.Batch(s, payload(s))) for s in (1, 2, 3))


@pytest.fixture(params=["sqlite", "postgres"])
def daemon(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[CollectorProcess, dict[str, str]]]:
    """A collector on an SQLite file, or on a throwaway PostgreSQL database."""
    with contextlib.ExitStack() as stack:
        db = (
            str(tmp_path / "sec.db")
            if request.param == "sqlite"
            else stack.enter_context(throwaway_database())
        )
        tokens = add_devices(db if "://" in db else Path(db), ["victim", "attacker", "revoked"])
        storage = open_storage(db)
        try:
            storage.revoke_device("revoked", time.time_ns())
        finally:
            storage.close()
        with CollectorProcess(db, env=ENV) as d:
            yield d, tokens


def refused(d: CollectorProcess, frames: bytes) -> wire.Error:
    """Send the frames on a fresh connection; the answer must be a fatal ERROR, then close."""
    with WireClient(*d.ingest) as c:
        c.send_raw(frames)
        ev = c.recv(timeout=15)
        assert isinstance(ev, wire.Error) and ev.fatal, ev
        assert c.closed_by_peer(15)
        return ev


def nothing_stored(db: str) -> None:
    assert all(v == (0, 0, 0) for v in rows(db).values()), rows(db)


def test_wrong_token_is_refused_and_stores_nothing(daemon):
    d, tokens = daemon
    ev = refused(d, attack_frames("victim", "not-the-token"))
    assert ev.code == errors.AUTH_FAILED
    ev = refused(d, attack_frames("victim", tokens["victim"][:-1] + "x"))
    assert ev.code == errors.AUTH_FAILED
    nothing_stored(d.db_arg)


def test_revoked_token_is_refused_and_stores_nothing(daemon):
    d, tokens = daemon
    ev = refused(d, attack_frames("revoked", tokens["revoked"]))
    assert ev.code == errors.AUTH_FAILED
    nothing_stored(d.db_arg)


def test_unknown_device_is_refused_and_not_registered(daemon):
    d, tokens = daemon
    ev = refused(d, attack_frames("intruder", tokens["victim"]))
    assert ev.code == errors.AUTH_FAILED
    assert "intruder" not in rows(d.db_arg)
    nothing_stored(d.db_arg)


def test_batch_without_hello_is_refused(daemon):
    d, _ = daemon
    refused(d, wire.encode(wire.Batch(1, payload(1))))
    nothing_stored(d.db_arg)


def test_captured_token_of_another_device_is_refused(daemon):
    d, tokens = daemon
    # The attacker's own valid token presented as the victim, and the victim's as the attacker.
    assert refused(d, attack_frames("victim", tokens["attacker"])).code == errors.AUTH_FAILED
    assert refused(d, attack_frames("attacker", tokens["victim"])).code == errors.AUTH_FAILED
    nothing_stored(d.db_arg)


def test_second_hello_on_an_established_connection_does_not_change_identity(daemon):
    d, tokens = daemon
    with WireClient(*d.ingest) as c:
        assert isinstance(c.hello("attacker", tokens["attacker"]), wire.Welcome)
        # Replay a (captured, valid) victim HELLO mid-connection, batches right behind it.
        c.send_raw(attack_frames("victim", tokens["victim"]))
        answers = [c.recv(timeout=15) for _ in range(4)]
    hello_answers = [a for a in answers if isinstance(a, wire.Error)]
    assert len(hello_answers) == 1 and hello_answers[0].code == errors.UNEXPECTED_MESSAGE
    assert not any(isinstance(a, wire.Welcome) for a in answers)
    acks = [a for a in answers if isinstance(a, wire.Ack)]
    assert [a.seq for a in acks] == [1, 2, 3]
    r = rows(d.db_arg)
    assert r["victim"] == (0, 0, 0)
    assert r["attacker"][0] == 3  # stored, but as the attacker's own readings


def test_readings_naming_another_device_are_stored_under_the_sender(daemon):
    d, tokens = daemon
    with WireClient(*d.ingest) as c:
        assert isinstance(c.hello("attacker", tokens["attacker"]), wire.Welcome)
        for seq in (1, 2):
            ack = c.batch(seq, payload(seq, sensor="victim/temp"))
            assert isinstance(ack, wire.Ack) and ack.accepted == 1
    r = rows(d.db_arg)
    assert r["victim"] == (0, 0, 0)
    assert r["attacker"] == (2, 1, 2)
    st = stored(d.db_arg)
    assert set(st.values) == {("attacker", "victim/temp")}
