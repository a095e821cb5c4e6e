"""Queries against a DB filled through the real collector daemon (subprocess, real TCP).

The CLI reads the file (`--db`) and the daemon's HTTP API (`--url`); both must give the same
rows. `tail` and the SSE stream must show what is committed after they start, and nothing
before. `rejected --replay` moves fixed rejects into the readings exactly once while the
daemon keeps running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from collector.cli import cli
from schemas import wire
from tests.collector.wireclient import CollectorProcess, WireClient

S = 1_000_000_000
MIN = 60 * S
T0 = 1_764_000_000 * S  # a round minute
ROOT = Path(__file__).resolve().parents[2]
_TOKENS: dict[str, str] = {}  # device tokens are shown once, at `devices add`


def _batch(c: WireClient, seq: int, readings: list[object]) -> wire.Ack:
    ack = c.batch(seq, readings)
    assert isinstance(ack, wire.Ack), ack
    return ack


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorProcess]:
    db = tmp_path_factory.mktemp("e2e") / "t.db"
    with CollectorProcess(db) as d:
        tok_g, tok_t = d.add_device("greenhouse-1"), d.add_device("tracker-1")
        _TOKENS["greenhouse-1"] = tok_g
        with WireClient(*d.ingest) as c:
            assert isinstance(c.hello("greenhouse-1", tok_g), wire.Welcome)
            temps: list[object] = [
                ["air-temp", "temperature", T0 + k * 30 * S, 20.0 + k / 2, "C", {"zone": "z1"}]
                for k in range(20)
            ]
            ack = _batch(c, 1, temps)
            assert ack.accepted == 20
            more: list[object] = [
                ["door", "state", T0 + k * MIN, k % 2 == 1, None, None] for k in range(5)
            ]
            more += [["pump", "counter", T0 + k * MIN, k * 3, None, None] for k in range(5)]
            more.append(["flow", "flowrate", T0, 12.5, "l/min", None])  # unknown kind
            more.append(["air-temp", "temperature", T0, -500.0, "C", None])  # below 0 K
            ack = _batch(c, 2, more)
            assert ack.accepted == 10 and len(ack.rejects) == 2
        with WireClient(*d.ingest) as c:
            assert isinstance(c.hello("tracker-1", tok_t), wire.Welcome)
            gps: list[object] = [
                ["gps", "gps", T0 + k * MIN, {"lat": 52.0 + k / 100, "lon": 13.0}, None, None]
                for k in range(3)
            ]
            _batch(c, 1, gps)
        yield d


def _jsonl(*args: str) -> list[dict[str, object]]:
    result = CliRunner().invoke(cli, [*args, "--format", "jsonl"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def _url(d: CollectorProcess) -> str:
    assert d.http is not None
    return f"http://{d.http[0]}:{d.http[1]}"


QUERIES = [
    ("query",),
    ("query", "--device", "green*", "--sensor", "air-*", "--since", "2025-11-24T16:05:00Z"),
    ("query", "--tag", "zone=z1", "--order", "desc", "--limit", "5"),
    ("query", "--kind", "gps", "--field", "lat"),
    ("query", "--latest"),
    ("query", "--sensor", "air-temp", "--every", "2m", "--agg", "avg"),
    ("query", "--sensor", "pump", "--every", "1h", "--agg", "sum"),
    ("series",),
    ("rejected", "--code", "out_of_range"),
    ("export", "--kind", "state"),
]


@pytest.mark.parametrize("args", QUERIES, ids=[" ".join(q) for q in QUERIES])
def test_file_and_http_give_the_same_rows(daemon: CollectorProcess, args: tuple[str, ...]) -> None:
    from_file = _jsonl(*args, "--db", str(daemon.db))
    assert from_file, "every query here matches something"
    assert _jsonl(*args, "--url", _url(daemon)) == from_file


def test_values_through_the_daemon_keep_their_types(daemon: CollectorProcess) -> None:
    db = str(daemon.db)
    door = _jsonl("query", "--db", db, "--sensor", "door")
    assert [r["value"] for r in door] == [False, True, False, True, False]
    pump = _jsonl("query", "--db", db, "--sensor", "pump", "--latest")
    assert [(r["value"], r["unit"]) for r in pump] == [(12, "")]
    temps = _jsonl("query", "--db", db, "--sensor", "air-temp", "--limit", "2")
    assert [(r["value"], r["unit"], r["tags"]) for r in temps] == [
        (20.0, "C", {"zone": "z1"}),
        (20.5, "C", {"zone": "z1"}),
    ]
    buckets = _jsonl(
        "query", "--db", db, "--sensor", "air-temp", "--every", "5m", "--agg", "count",
        "--until", f"@{T0 + 10 * MIN}",
    )  # fmt: skip
    assert [r["value"] for r in buckets] == [10, 10]


def _tail(*args: str) -> tuple[subprocess.Popen[str], threading.Event]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "collector", "tail", "--format", "jsonl", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    following = threading.Event()

    def watch() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith("tail: following"):
                following.set()

    threading.Thread(target=watch, daemon=True).start()
    return proc, following


def test_tail_and_stream_show_only_readings_committed_after_they_start(
    daemon: CollectorProcess,
) -> None:
    common = ("--device", "greenhouse-1", "--sensor", "air-temp", "--count", "2", "--for", "60s")
    file_tail, f_ready = _tail("--db", str(daemon.db), *common)
    http_tail, h_ready = _tail("--url", _url(daemon), *common)
    try:
        assert f_ready.wait(30) and h_ready.wait(30)
        token = daemon.add_device("greenhouse-1b")  # another device: must not show
        with WireClient(*daemon.ingest) as c:
            assert isinstance(c.hello("greenhouse-1b", token), wire.Welcome)
            _batch(c, 1, [["air-temp", "temperature", T0 + 3600 * S, 5.0, "C", None]])
        with WireClient(*daemon.ingest) as c:
            # Resume the device's sequence: WELCOME says what was committed.
            welcome = c.hello("greenhouse-1", _TOKENS["greenhouse-1"])
            assert isinstance(welcome, wire.Welcome)
            seq = welcome.last_seq + 1
            _batch(c, seq, [["air-temp", "temperature", T0 + 3600 * S, 30.0, "C", {"zone": "z1"}]])
            _batch(c, seq + 1, [["air-temp", "temperature", T0 + 3601 * S, 31.0, "C", None]])
        outs = [p.communicate(timeout=60)[0] for p in (file_tail, http_tail)]
    finally:
        for p in (file_tail, http_tail):
            p.kill()
            p.wait()
    for out in outs:
        rows = [json.loads(x) for x in out.splitlines()]
        assert sorted((r["value"], r["tags"]) for r in rows) == [
            (30.0, {"zone": "z1"}),
            (31.0, {}),
        ]


def test_replay_while_the_daemon_runs_moves_fixed_rejects_once(
    daemon: CollectorProcess, tmp_path: Path
) -> None:
    db = str(daemon.db)
    kinds = tmp_path / "kinds.toml"
    kinds.write_text('[kinds.flowrate]\ntype = "number"\nunits = ["l/min"]\n')
    pending = _jsonl("rejected", "--db", db, "--pending")
    assert {r["code"] for r in pending} >= {"unknown_kind", "out_of_range"}
    runner = CliRunner()
    first = runner.invoke(cli, ["rejected", "--db", db, "--replay", "--kinds", str(kinds)])
    assert first.exit_code == 0, first.output
    assert first.stdout.startswith("replayed 1 of ")
    again = runner.invoke(cli, ["rejected", "--db", db, "--replay", "--kinds", str(kinds)])
    assert again.stdout.startswith("replayed 0 of ")
    flow = _jsonl("query", "--db", db, "--sensor", "flow")
    assert [(r["value"], r["unit"], r["kind"]) for r in flow] == [(12.5, "l/min", "flowrate")]
    assert _jsonl("query", "--url", _url(daemon), "--sensor", "flow") == flow
