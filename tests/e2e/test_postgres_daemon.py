"""The collector daemon and the read and admin commands on PostgreSQL (`--db postgresql://…`):
real daemons, real sockets, a throwaway database on the local server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

from schemas import errors, wire
from tests.collector.wireclient import CollectorProcess, WireClient
from tests.storage.pgserver import throwaway_database

NOW = time.time_ns()


def reading(i: int, value: float = 20.0) -> list[object]:
    return ["room/air", "temperature", NOW - (10 - i) * 10**9, value + i, "C", None]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def url() -> Iterator[str]:
    with throwaway_database() as u:
        yield u


def test_the_daemon_and_the_commands_run_on_postgresql(url: str) -> None:
    added = cli("devices", "add", "pg-1", "--db", url)
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    with CollectorProcess(url) as d:
        with WireClient(*d.ingest) as c:
            assert isinstance(c.hello("pg-1", token, stream="st-1"), wire.Welcome)
            batch: list[object] = [
                reading(1),
                reading(2),
                reading(3),
                ["room/rh", "humidity", NOW, 104.0, None, None],
            ]
            ack = c.batch(1, batch)
            assert isinstance(ack, wire.Ack), ack
            assert (ack.accepted, ack.duplicate, [r.code for r in ack.rejects]) == (
                3,
                0,
                ["out_of_range"],
            )
            again = c.batch(1, batch)  # a resend: nothing new
            assert isinstance(again, wire.Ack) and (again.accepted, again.duplicate) == (0, 3)
        with WireClient(*d.ingest) as c:
            welcome = c.hello("pg-1", token, stream="st-1")
            assert isinstance(welcome, wire.Welcome) and welcome.last_seq == 1
        assert d.http is not None
        host, port = d.http
        with urllib.request.urlopen(f"http://{host}:{port}/api/v1/latest", timeout=10) as r:
            latest = json.loads(r.read())
        assert [row["value"] for row in latest["readings"]] == [23.0]
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as r:
            assert "telemetry_readings_accepted_total 3" in r.read().decode()

    q = cli("query", "--db", url, "--device", "pg-1", "--format", "json")
    assert q.returncode == 0, q.stderr
    assert [row["value"] for row in json.loads(q.stdout)] == [21.0, 22.0, 23.0]
    rej = cli("rejected", "--db", url, "--format", "json")
    assert rej.returncode == 0, rej.stderr
    (dead,) = json.loads(rej.stdout)
    assert (dead["device"], dead["code"], dead["path"]) == ("pg-1", "out_of_range", "value")
    devs = cli("devices", "list", "--db", url, "--format", "json")
    assert devs.returncode == 0, devs.stderr
    assert [d["device"] for d in json.loads(devs.stdout)] == ["pg-1"]


def test_two_collectors_on_one_postgresql_fence_an_older_session(url: str) -> None:
    added = cli("devices", "add", "roamer", "--db", url)
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    with CollectorProcess(url) as p1, CollectorProcess(url) as p2:
        with WireClient(*p1.ingest) as old, WireClient(*p2.ingest) as new:
            assert isinstance(old.hello("roamer", token, stream="s"), wire.Welcome)
            assert isinstance(new.hello("roamer", token, stream="s"), wire.Welcome)
            fenced = old.batch(2, [reading(2)])
            assert isinstance(fenced, wire.Error), fenced
            assert (fenced.code, fenced.seq) == (errors.SESSION_REPLACED, 2)
            for seq in (1, 2):
                ack = new.batch(seq, [reading(seq)])
                assert isinstance(ack, wire.Ack) and ack.accepted == 1
    q = cli("query", "--db", url, "--device", "roamer", "--format", "json")
    assert [row["value"] for row in json.loads(q.stdout)] == [21.0, 22.0]
