"""The /api/v1 routes served by a real aiohttp server on 127.0.0.1 port 0 over a real DB file."""

from __future__ import annotations

import json
import queue
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from collector.errors import ConfigError
from collector.query import readings as query
from collector.web import api as http_api
from tests.collector.test_query_support import (
    MIN,
    T0,
    Db,
    S,
    get_json,
    read_storage,
    serve_api,
    standard_db,
)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Db]:
    d = standard_db(tmp_path / "t.db")
    yield d
    d.close()


@pytest.fixture
def api(db: Db) -> Iterator[str]:
    with serve_api(db.path) as base:
        yield base + "/api/v1"


def _url(api: str, path: str, **params: object) -> str:
    pairs: list[tuple[str, str]] = []
    for k, v in params.items():
        for item in v if isinstance(v, list) else [v]:
            pairs.append((k, str(item)))
    return f"{api}/{path}" + ("?" + urllib.parse.urlencode(pairs) if pairs else "")


def _all_pages(
    api: str, path: str, key: str, **params: object
) -> tuple[list[dict[str, object]], int]:
    rows: list[dict[str, object]] = []
    pages = 0
    cursor = None
    while True:
        extra: dict[str, object] = {"cursor": cursor} if cursor else {}
        status, body = get_json(_url(api, path, **params, **extra))
        assert status == 200, body
        page = body[key]
        assert isinstance(page, list)
        rows += page
        pages += 1
        cursor = body["next"]
        if cursor is None:
            return rows, pages


def _file_rows(db: Db, f: query.Filters, order: query.Order) -> list[dict[str, object]]:
    conn = read_storage(db.path)
    try:
        rows = list(query.readings(conn, query.resolve_series(conn, f), None, None, order=order))
        out: list[dict[str, object]] = json.loads(json.dumps(rows))  # as JSON carries them
        return out
    finally:
        conn.close()


def test_series(api: str, db: Db) -> None:
    status, body = get_json(_url(api, "series", device="greenhouse-*", tag="zone=z2"))
    assert status == 200
    assert [(s["device"], s["sensor"], s["count"]) for s in body["series"]] == [
        ("greenhouse-2", "air-temp", 10)
    ]
    status, body = get_json(_url(api, "series", kind="gps", field="lon"))
    assert [(s["sensor"], s["field"], s["unit"]) for s in body["series"]] == [("gps", "lon", "")]


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_readings_paginate_to_exactly_the_file_answer(api: str, db: Db, order: query.Order) -> None:
    rows, pages = _all_pages(api, "readings", "readings", order=order, limit=7)
    assert rows == _file_rows(db, query.Filters(), order=order)
    assert len(rows) == 44 and pages == 7  # 44 rows in pages of 7


def test_readings_filters_and_range(api: str, db: Db) -> None:
    status, body = get_json(
        _url(
            api,
            "readings",
            kind="gps",
            field="lat",
            since=query.format_ts(T0 + MIN),
            until=f"@{T0 + 2 * MIN + 1}",
        )
    )
    assert status == 200 and body["next"] is None
    assert [(r["ts_ns"], r["value"]) for r in body["readings"]] == [
        (T0 + MIN, 52.01),
        (T0 + 2 * MIN, 52.02),
    ]


def test_aggregate_pages_match_the_query_layer(api: str, db: Db) -> None:
    rows, pages = _all_pages(api, "aggregate", "aggregates", every="1m", agg="avg", limit=4)
    conn = read_storage(db.path)
    expected = list(
        query.aggregates(conn, query.resolve_series(conn, query.Filters()), None, None, MIN, "avg")
    )
    conn.close()
    assert rows == json.loads(json.dumps(expected)) and pages > 3
    desc, _ = _all_pages(
        api, "aggregate", "aggregates", every="1m", agg="avg", limit=4, order="desc"
    )
    assert desc == rows[::-1]


def test_latest_and_rejected(api: str, db: Db) -> None:
    db.reject("pump-1", ["x", "nope", T0, 1, None, None])
    status, body = get_json(_url(api, "latest", sensor="running"))
    assert status == 200
    assert [(r["device"], r["value"], r["ts_ns"]) for r in body["readings"]] == [
        ("pump-1", False, T0 + 3 * MIN)
    ]
    status, body = get_json(_url(api, "rejected", pending="true"))
    assert status == 200
    assert [(r["device"], r["code"]) for r in body["rejected"]] == [("pump-1", "unknown_kind")]


@pytest.mark.parametrize(
    ("path", "params", "param"),
    [
        ("readings", {"since": "garbage"}, "since"),
        ("readings", {"until": "yesterday-ish"}, "until"),
        ("readings", {"since": "1h", "until": "2h"}, "until"),
        ("readings", {"limit": "0"}, "limit"),
        ("readings", {"limit": "1000000"}, "limit"),
        ("readings", {"order": "sideways"}, "order"),
        ("readings", {"cursor": "abc"}, "cursor"),
        ("readings", {"tag": "=x"}, "tag"),
        ("readings", {"frobnicate": "1"}, "frobnicate"),
        ("aggregate", {"every": "5m", "agg": "nope"}, "agg"),
        ("aggregate", {"agg": "avg"}, "every"),
        ("aggregate", {"every": "0s", "agg": "avg"}, "every"),
        ("latest", {"since": "x"}, "since"),
        ("rejected", {"pending": "maybe"}, "pending"),
    ],
)
def test_bad_parameters_get_400_naming_them(
    api: str, path: str, params: dict[str, str], param: str
) -> None:
    status, body = get_json(_url(api, path, **params))
    assert status == 400
    assert body["param"] == param
    assert isinstance(body["error"], str) and body["error"].startswith(param)


def test_read_token(db: Db) -> None:
    async def own_route(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    def extra(app: web.Application) -> None:
        app.router.add_get("/api/v1/own", http_api.guard(own_route))

    with serve_api(db.path, token="s3cret", extra=extra) as base:
        status, body = get_json(base + "/api/v1/series")
        assert status == 401 and body["param"] == "Authorization"
        assert get_json(base + "/api/v1/series", token="wrong")[0] == 401
        status, body = get_json(base + "/api/v1/series", token="s3cret")
        assert status == 200 and len(body["series"]) == 8
        assert get_json(base + "/api/v1/own")[0] == 401
        assert get_json(base + "/api/v1/own", token="s3cret") == (200, {"ok": True})


def test_token_required_off_loopback() -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.3.4.5", "[::1]"):
        http_api.require_token(host, None)
    for host in ("0.0.0.0", "192.168.1.10", "::", "collector.example"):
        with pytest.raises(ConfigError, match="token"):
            http_api.require_token(host, None)
        http_api.require_token(host, "t")


def _sse_reader(url: str, out: queue.Queue[str]) -> None:
    with urllib.request.urlopen(url, timeout=20) as resp:
        for raw in resp:
            line = raw.decode().rstrip("\n")
            out.put(line)
            if line.startswith("data: ") and '"value":2.0' in line:
                return


def _next_line(q: queue.Queue[str], pred: object, deadline: float) -> str:
    while True:
        line = q.get(timeout=max(0.01, deadline - time.monotonic()))
        if callable(pred) and pred(line):
            return line


def test_stream_delivers_only_new_readings(api: str, db: Db) -> None:
    lines: queue.Queue[str] = queue.Queue()
    t = threading.Thread(
        target=_sse_reader, args=(_url(api, "stream", device="tracker-*"), lines), daemon=True
    )
    t.start()
    deadline = time.monotonic() + 20
    assert _next_line(lines, lambda s: s == ": ready", deadline)
    db.add("greenhouse-1", "air-temp", "temperature", [(T0 + 900 * S, 1.0)], tags={"zone": "z1"})
    db.add("tracker-1", "gps", "gps", [(T0 + 900 * S, {"lat": 1.0, "lon": 2.0})])
    first = _next_line(lines, lambda s: s.startswith("data: "), deadline)
    second = _next_line(lines, lambda s: s.startswith("data: "), deadline)
    got = [json.loads(x[6:]) for x in (first, second)]
    assert [(r["field"], r["value"], r["ts_ns"]) for r in got] == [
        ("lat", 1.0, T0 + 900 * S),
        ("lon", 2.0, T0 + 900 * S),
    ]
    t.join(20)
    assert not t.is_alive()


def test_open_stream_does_not_hold_up_shutdown(db: Db) -> None:
    lines: queue.Queue[str] = queue.Queue()
    done = threading.Event()

    def reader(url: str) -> None:
        with urllib.request.urlopen(url, timeout=20) as resp:
            for raw in resp:
                lines.put(raw.decode().rstrip("\n"))
        done.set()  # the server ended the stream cleanly

    with serve_api(db.path) as base:
        threading.Thread(target=reader, args=(base + "/api/v1/stream",), daemon=True).start()
        assert _next_line(lines, lambda s: s == ": ready", time.monotonic() + 20)
        started = time.monotonic()
    # serve_api's exit ran the app's shutdown (and waited for its thread) with a client attached
    assert done.wait(20)
    assert time.monotonic() - started < 20


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_rejected_paginates(api: str, db: Db, order: str) -> None:
    for i in range(5):  # same receive time: the id breaks the tie
        db.reject("pump-1", ["x", "nope", T0 + i, i, None, None])
    db.reject("tracker-1", ["y", "nope", T0, 0, None, None], received_ns=T0 + S)
    rows, pages = _all_pages(api, "rejected", "rejected", order=order, limit=2)
    assert pages == 3
    ids = [r["id"] for r in rows]
    assert ids == ([1, 2, 3, 4, 5, 6] if order == "asc" else [6, 5, 4, 3, 2, 1])
