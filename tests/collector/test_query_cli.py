"""`telemetry query|series|tail|rejected|export` through click and the real entry point."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from collector.cli import cli, main
from collector.query import readings as query
from tests.collector.test_query_support import (
    MIN,
    T0,
    Db,
    S,
    serve_api,
    standard_db,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Db]:
    d = standard_db(tmp_path / "t.db")
    yield d
    d.close()


def run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def jsonl(*args: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in run(*args, "--format", "jsonl").splitlines()]


def test_query_filters_and_ranges(db: Db) -> None:
    d = str(db.path)
    rows = jsonl("query", "--db", d, "--device", "greenhouse-*", "--sensor", "air-*")
    assert len(rows) == 20 and {r["device"] for r in rows} == {"greenhouse-1", "greenhouse-2"}
    rows = jsonl("query", "--db", d, "--tag", "zone=z2", "--since", "2025-11-24T16:04:00Z")
    assert [(r["device"], r["value"]) for r in rows] == [
        ("greenhouse-2", 25.0),
        ("greenhouse-2", 25.5),
    ]
    rows = jsonl(
        "query",
        "--db",
        d,
        "--kind",
        "gps",
        "--field",
        "lon",
        "--since",
        f"@{T0}",
        "--until",
        "2025-11-24T17:01:00.5+01:00",
    )
    assert [r["value"] for r in rows] == [13.0, 13.01]
    rows = jsonl("query", "--db", d, "--sensor", "humidity", "--order", "desc", "--limit", "3")
    assert [r["ts_ns"] for r in rows] == [T0 + 4 * MIN, T0 + 4 * MIN, T0 + 3 * MIN]
    # Relative times count back from now: the fixture's readings are long past.
    assert jsonl("query", "--db", d, "--since", "15m") == []
    assert len(jsonl("query", "--db", d, "--since", "3650d")) == 44


def test_query_latest_and_aggregates(db: Db) -> None:
    d = str(db.path)
    latest = jsonl("query", "--db", d, "--latest", "--device", "pump-1")
    assert [(r["sensor"], r["value"]) for r in latest] == [("cycles", 30), ("running", False)]
    agg = jsonl(
        "query",
        "--db",
        d,
        "--device",
        "greenhouse-1",
        "--sensor",
        "air-temp",
        "--every",
        "2m",
        "--agg",
        "max",
    )
    assert [(r["ts_ns"], r["value"], r["agg"]) for r in agg] == [
        (T0, 21.5, "max"),
        (T0 + 2 * MIN, 23.5, "max"),
        (T0 + 4 * MIN, 24.5, "max"),
    ]


def test_formats(db: Db) -> None:
    d = str(db.path)
    args = ("query", "--db", d, "--device", "greenhouse-1", "--sensor", "air-temp", "--limit", "2")
    table = run(*args, "--format", "table").splitlines()
    assert table[0].split() == ["TS", "DEVICE", "SENSOR", "KIND", "VALUE", "TAGS"]
    assert table[1].split() == [
        "2025-11-24T16:00:00Z",
        "greenhouse-1",
        "air-temp",
        "temperature",
        "20",
        "C",
        "zone=z1",
    ]
    rows = list(csv.DictReader(io.StringIO(run(*args, "--format", "csv"))))
    assert [(r["ts"], r["value"], r["unit"], r["tags"]) for r in rows] == [
        ("2025-11-24T16:00:00Z", "20.0", "C", '{"zone":"z1"}'),
        ("2025-11-24T16:00:30Z", "20.5", "C", '{"zone":"z1"}'),
    ]
    as_json = json.loads(run(*args, "--format", "json"))
    assert as_json == jsonl(*args)
    # Not a terminal: the default is JSON Lines.
    assert [json.loads(x) for x in run(*args).splitlines()] == as_json


def test_series_listing(db: Db) -> None:
    rows = jsonl("series", "--db", str(db.path), "--kind", "gps")
    assert [(r["device"], r["field"], r["count"], r["first"]) for r in rows] == [
        ("tracker-1", "lat", 3, "2025-11-24T16:00:00Z"),
        ("tracker-1", "lon", 3, "2025-11-24T16:00:00Z"),
    ]


def test_export_streams_csv_and_jsonl(
    db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(query, "ROWS_PER_SCAN", 5)  # many windows: the streamed path
    out = tmp_path / "x.csv"
    run("export", "--db", str(db.path), "--format", "csv", "-o", str(out))
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 44 and rows[0]["ts_ns"] == str(T0)
    assert [int(r["ts_ns"]) for r in rows] == sorted(int(r["ts_ns"]) for r in rows)
    lines = run("export", "--db", str(db.path), "--sensor", "cycles").splitlines()
    assert [json.loads(x)["value"] for x in lines] == [0, 10, 20, 30]
    agg = run("export", "--db", str(db.path), "--sensor", "cycles", "--every", "1h", "--agg", "sum")
    assert json.loads(agg)["value"] == 60


def test_rejected_listing(db: Db) -> None:
    db.reject("pump-1", ["flow", "flowrate", T0, 1.0, None, None])
    db.reject(
        "tracker-1", ["gps", "gps", T0, {"lat": 99.0, "lon": 1.0}, None, None], code="out_of_range"
    )
    rows = jsonl("rejected", "--db", str(db.path), "--code", "out_of_range")
    assert [(r["device"], r["code"], r["replayed"]) for r in rows] == [
        ("tracker-1", "out_of_range", None)
    ]
    assert len(jsonl("rejected", "--db", str(db.path), "--device", "pump-*")) == 1


def test_replay_moves_fixed_rejects_exactly_once(db: Db, tmp_path: Path) -> None:
    kinds = tmp_path / "kinds.toml"
    kinds.write_text('[kinds.flowrate]\ntype = "number"\nunits = ["l/min"]\n')
    db.reject("pump-1", ["flow", "flowrate", T0 + 5 * S, 12.5, "l/min", {"line": "a"}])
    db.reject("pump-1", ["flow", "flowrate", T0 + 6 * S, -1.0, "gallons", None], code="bad_unit")
    db.reject("pump-1", ["temp", "temperature", T0 + 7 * S, -300.0, "C", None], code="out_of_range")
    before = db.count_head()
    d = str(db.path)
    msg = run("rejected", "--db", d, "--replay", "--kinds", str(kinds))
    assert msg.strip() == "replayed 1 of 3 pending rejects; 2 still rejected"
    assert db.count_head() == before + 1
    rows = jsonl("query", "--db", d, "--sensor", "flow")
    assert [(r["value"], r["unit"], r["tags"], r["kind"]) for r in rows] == [
        (12.5, "l/min", {"line": "a"}, "flowrate")
    ]
    # Twice: nothing more moves, nothing is inserted twice.
    msg = run("rejected", "--db", d, "--replay", "--kinds", str(kinds))
    assert msg.strip() == "replayed 0 of 2 pending rejects; 2 still rejected"
    assert db.count_head() == before + 1
    listed = jsonl("rejected", "--db", d)
    assert [r["replayed"] is not None for r in listed] == [True, False, False]
    assert len(jsonl("rejected", "--db", d, "--pending")) == 2
    series = jsonl("series", "--db", d, "--sensor", "flow")
    assert [(r["count"], r["first_ns"]) for r in series] == [(1, T0 + 5 * S)]


def test_url_gives_the_same_answers_as_the_file(db: Db) -> None:
    d = str(db.path)
    db.reject("pump-1", ["flow", "flowrate", T0, 1.0, None, None])
    with serve_api(db.path) as base:
        for args in [
            ("query",),
            (
                "query",
                "--device",
                "greenhouse-*",
                "--since",
                "2025-11-24T16:02:00Z",
                "--order",
                "desc",
            ),
            ("query", "--latest"),
            ("query", "--every", "1m", "--agg", "avg"),
            ("query", "--kind", "gps", "--field", "lat", "--limit", "2"),
            ("series", "--tag", "zone=z1"),
            ("rejected",),
            ("export", "--sensor", "air-temp"),
        ]:
            assert jsonl(*args, "--url", base) == jsonl(*args, "--db", d), args


def _bad(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_bad_arguments_exit_2_with_one_line(
    db: Db, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d = str(db.path)
    assert "--since" in _bad(capsys, "query", "--db", d, "--since", "garbage")
    assert "--agg" in _bad(capsys, "query", "--db", d, "--every", "5m", "--agg", "nope")
    assert "--every: needs --agg" in _bad(capsys, "query", "--db", d, "--every", "5m")
    assert "--agg: needs --every" in _bad(capsys, "query", "--db", d, "--agg", "avg")
    assert "--every" in _bad(capsys, "query", "--db", d, "--every", "soon", "--agg", "avg")
    assert "--until" in _bad(capsys, "query", "--db", d, "--since", "1h", "--until", "2h")
    assert "--tag" in _bad(capsys, "query", "--db", d, "--tag", "nokey")
    assert "--order" in _bad(capsys, "query", "--db", d, "--order", "up")
    assert "--limit" in _bad(capsys, "query", "--db", d, "--limit", "0")
    assert "--latest" in _bad(
        capsys, "query", "--db", d, "--latest", "--every", "1m", "--agg", "avg"
    )
    assert "--db" in _bad(capsys, "query", "--db", str(tmp_path / "missing.db"))
    (tmp_path / "junk.db").write_text("not sqlite")
    assert "not a database" in _bad(capsys, "series", "--db", str(tmp_path / "junk.db"))
    sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE t (x)").connection.close()
    assert "not a telemetry database" in _bad(capsys, "series", "--db", str(tmp_path / "other.db"))
    assert "--url" in _bad(capsys, "series", "--url", "ftp://x")
    assert "--format" in _bad(capsys, "export", "--db", d, "--format", "table")
    assert "--replay" in _bad(capsys, "rejected", "--replay", "--url", "http://127.0.0.1:1")
    assert "--for" in _bad(capsys, "tail", "--db", d, "--for", "a while")


def test_url_errors_are_one_line(db: Db, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    assert "cannot reach" in _bad(capsys, "series", "--url", dead)
    with serve_api(db.path) as base:
        # The API's 400 message names the parameter; the CLI passes it on.
        err = _bad(capsys, "query", "--url", base, "--every", "5m", "--agg", "nope")
        assert "--agg" in err
        err = _bad(
            capsys,
            "query",
            "--url",
            base,
            "--sensor",
            "x",
            "--since",
            "@1",
            "--until",
            "@999999999999999999999",
        )
        assert "--until" in err


# ---------------------------------------------------------------- tail (real processes)


def _start_tail(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "collector", "tail", "--format", "jsonl", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_following(proc: subprocess.Popen[str]) -> None:
    assert proc.stderr is not None
    found = threading.Event()

    def watch() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith("tail: following"):
                found.set()
                return

    threading.Thread(target=watch, daemon=True).start()
    assert found.wait(30), "tail did not start"


@pytest.mark.parametrize("via", ["db", "url"])
def test_tail_shows_only_readings_committed_after_it_started(db: Db, via: str) -> None:
    with serve_api(db.path) as base:
        source = ["--db", str(db.path)] if via == "db" else ["--url", base]
        proc = _start_tail(*source, "--device", "greenhouse-*", "--count", "3", "--for", "60s")
        try:
            _wait_following(proc)
            db.add(
                "greenhouse-1",
                "air-temp",
                "temperature",
                [(T0 + 900 * S, 30.0)],
                tags={"zone": "z1"},
            )
            db.add("pump-1", "cycles", "counter", [(T0 + 900 * S, 7)])  # filtered out
            db.add(
                "greenhouse-2",
                "humidity",
                "humidity",
                [(T0 + 10 * MIN, 71.0), (T0 + 11 * MIN, 72.0)],
            )
            out, _ = proc.communicate(timeout=60)
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == 0
        rows = [json.loads(x) for x in out.splitlines()]
        # Within one poll rows come in time order, so compare as a set.
        assert sorted((r["device"], r["value"]) for r in rows) == [
            ("greenhouse-1", 30.0),
            ("greenhouse-2", 71.0),
            ("greenhouse-2", 72.0),
        ]


@pytest.mark.parametrize("via", ["db", "url"])
def test_tail_for_ends_a_quiet_tail(db: Db, via: str) -> None:
    with serve_api(db.path) as base:
        source = ["--db", str(db.path)] if via == "db" else ["--url", base]
        start = time.monotonic()
        result = CliRunner().invoke(cli, ["tail", *source, "--for", "0.3s", "--format", "csv"])
        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines() == [",".join(query.READING_COLUMNS)]  # header only
        assert time.monotonic() - start < 30


def test_replay_of_a_reading_already_compacted_stores_nothing_twice(db: Db, tmp_path: Path) -> None:
    from collector.storage.sqlite import compactor

    kinds = tmp_path / "kinds.toml"
    kinds.write_text('[kinds.flowrate]\ntype = "number"\nunits = ["l/min"]\n')
    reading = ["flow", "flowrate", T0 + 5 * S, 12.5, "l/min", {"line": "a"}]
    db.add("pump-1", "flow", "flowrate", [(T0 + 5 * S, 12.5)], unit="l/min", tags={"line": "a"})
    while compactor.maintenance(db.conn, T0 + 10 * 3600 * S):
        pass  # the reading now sits in a block, not in the head
    assert db.conn.execute("SELECT count(*) FROM readings_head").fetchone() == (0,)
    db.reject("pump-1", reading)  # the same reading, rejected once before the kind existed
    d = str(db.path)
    msg = run("rejected", "--db", d, "--replay", "--kinds", str(kinds))
    assert msg.strip() == "replayed 1 of 1 pending rejects; 0 still rejected"
    assert db.conn.execute("SELECT count(*) FROM readings_head").fetchone() == (0,)
    series = jsonl("series", "--db", d, "--sensor", "flow")
    assert [r["count"] for r in series] == [1]
    assert [r["value"] for r in jsonl("query", "--db", d, "--sensor", "flow")] == [12.5]
