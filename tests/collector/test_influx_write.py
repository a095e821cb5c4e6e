"""InfluxDB line-protocol writes (`POST /api/v2/write`, `POST /write`) to the real collector.

A `telemetry collector` subprocess with real sockets and a real SQLite file; the official
`influxdb-client` library is one of the senders, raw HTTP the others. Every test checks
what is stored (exactly once, after a resend too) and what lands in the dead-letter table.
Backpressure (429) and storage failure (503) are driven in-process against a real Writer.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import http.client
import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web

from collector.ingest.prepare import Ingest
from collector.ingest.writer import Writer
from collector.inputs.influx_http import InfluxInput
from collector.storage.sqlite import devices, store
from collector.storage.sqlite.backend import SQLiteStorage
from schemas import wire
from tests.collector.inputs_support import InputsCollector, Row, dead_letters, stored_rows
from tests.collector.wireclient import WireClient

S = 1_000_000_000
T0 = 1_764_000_000 * S
INPUTS = """
[[influx.kinds]]
sensor = "disk/used_percent"
kind = "gauge"
unit = "%"
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InputsCollector]:
    with InputsCollector(tmp_path_factory.mktemp("influx"), inputs_toml=INPUTS) as d:
        yield d


def post(
    d: InputsCollector,
    path: str,
    body: bytes,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    assert d.http is not None
    host, port = d.http
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, dict(resp.getheaders()), json.loads(data) if data else None
    finally:
        conn.close()


def token_header(token: str) -> dict[str, str]:
    return {"Authorization": f"Token {token}"}


def test_influxdb_client_points_are_stored_once_even_when_written_again(daemon):
    from influxdb_client import InfluxDBClient, Point, WritePrecision
    from influxdb_client.client.write_api import SYNCHRONOUS

    token = daemon.add_device("telegraf-1")
    assert daemon.http is not None
    url = f"http://{daemon.http[0]}:{daemon.http[1]}"
    points = [
        Point("cpu")
        .tag("cpu", "cpu-total")
        .tag("host", "web-1")
        .field("usage_idle", 97.5)
        .field("usage_user", 1.25)
        .time(T0, WritePrecision.NS),
        Point("mem").tag("host", "web-1").field("used", 8_000_000).field("swap_delta", -4)
        .time(T0, WritePrecision.NS),
        Point("disk").tag("host", "web-1").tag("path", "/").field("used_percent", 41.5)
        .time(T0, WritePrecision.NS),
        Point("system").tag("host", "web-1").field("up", True).field("os", "linux")
        .time(T0, WritePrecision.NS),
    ]  # fmt: skip
    for gzip_on in (False, False, True):  # the second and third writes are resends
        with InfluxDBClient(url=url, token=token, org="any", enable_gzip=gzip_on) as client:
            client.write_api(write_options=SYNCHRONOUS).write(bucket="any", record=points)
    tags = {"host": "web-1"}
    assert stored_rows(daemon.db, "telegraf-1") == [
        Row("cpu/usage_idle", "gauge", "", {**tags, "cpu": "cpu-total"}, T0, 97.5),
        Row("cpu/usage_user", "gauge", "", {**tags, "cpu": "cpu-total"}, T0, 1.25),
        Row("disk/used_percent", "gauge", "%", {**tags, "path": "/"}, T0, 41.5),
        Row("mem/swap_delta", "gauge", "", tags, T0, -4),
        Row("mem/used", "counter", "", tags, T0, 8_000_000),
        Row("system/os", "text", "", tags, T0, "linux"),
        Row("system/up", "state", "", tags, T0, 1),
    ]
    assert dead_letters(daemon.db, "telegraf-1") == []


def test_good_lines_are_stored_and_bad_ones_dead_lettered_with_a_400_naming_the_first(daemon):
    token = daemon.add_device("partial-1")
    body = (
        f"room,site=a temp=21.5 {T0}\n"
        "this is not line protocol\n"
        f"room,site=a temp=22.0 {T0 + S}\n"
        f"bad\\ name temp=1 {T0}\n"  # parses, but "bad name/temp" is not a sensor name
        f'room,site=a note="{"x" * 2000}" {T0}\n'  # text over 1024 characters
    ).encode()
    for _ in range(2):  # a resend stores nothing twice
        status, _, answer = post(daemon, "/api/v2/write?org=o&bucket=b", body, token_header(token))
        assert status == 400
        assert answer["code"] == "invalid"
        assert answer["message"].startswith("partial write: line 2: ")
        assert "3 of 5 rejected" in answer["message"]
    assert stored_rows(daemon.db, "partial-1") == [
        Row("room/temp", "gauge", "", {"site": "a"}, T0, 21.5),
        Row("room/temp", "gauge", "", {"site": "a"}, T0 + S, 22.0),
    ]
    dead = dead_letters(daemon.db, "partial-1")
    assert [(d.idx, d.code) for d in dead[:3]] == [
        (2, "invalid"),
        (4, "bad_sensor"),
        (5, "too_long"),
    ]
    assert dead[0].reading == "this is not line protocol"
    assert dead[0].message.startswith("line 2: ")
    assert dead[1].message.startswith("line 4: ")
    assert isinstance(dead[1].reading, list) and dead[1].reading[0] == "bad name/temp"
    # Dead letters record requests: the resent body's bad lines are recorded again.
    assert [(d.idx, d.code) for d in dead[3:]] == [(d.idx, d.code) for d in dead[:3]]
    assert all(d.seq == 0 for d in dead)


def test_tokens_name_the_device_and_anything_else_is_401(daemon):
    token = daemon.add_device("auth-1")
    other = daemon.add_device("auth-2")
    line = f"m f=1 {T0}\n".encode()
    basic = base64.b64encode(f"auth-1:{token}".encode()).decode()
    accepted = [
        ("/api/v2/write", token_header(token)),
        ("/write?db=x", token_header(token)),
        (f"/write?db=x&u=auth-1&p={token}", {}),
        (f"/write?db=x&p={token}", {}),
        ("/write?db=x", {"Authorization": f"Basic {basic}"}),
    ]
    for path, headers in accepted:
        assert post(daemon, path, line, headers)[0] == 204, path
    refused = [
        ("/api/v2/write", {}),
        ("/api/v2/write", token_header("not-a-token")),
        ("/api/v2/write", {"Authorization": f"Bearer {token}"}),
        ("/api/v2/write", {"Authorization": f"Basic {basic}"}),  # v2 takes tokens only
        (f"/write?u=auth-2&p={token}", {}),  # someone else's name
    ]
    for path, headers in refused:
        status, hdrs, answer = post(daemon, path, f"m f=2 {T0}\n".encode(), headers)
        assert status == 401, path
        assert "WWW-Authenticate" in hdrs
        if path.startswith("/api/v2/"):
            assert answer["code"] == "unauthorized" and answer["message"]
        else:  # InfluxDB 1.x's error shape
            assert set(answer) == {"error"} and answer["error"]
    subprocess.run(
        [sys.executable, "-m", "collector", "devices", "revoke", "auth-2", "--db", str(daemon.db)],
        check=True,
        capture_output=True,
    )
    assert post(daemon, "/api/v2/write", line, token_header(other))[0] == 401
    assert stored_rows(daemon.db, "auth-1") == [Row("m/f", "gauge", "", {}, T0, 1.0)]
    assert stored_rows(daemon.db, "auth-2") == []


def test_precision_scales_timestamps_and_a_missing_one_is_the_receive_time(daemon):
    token = daemon.add_device("prec-1")
    sec = T0 // S
    for precision, ts in [
        ("s", sec),
        ("ms", sec * 1000 + 1),
        ("us", sec * 10**6 + 2),
        ("ns", T0 + 3),
    ]:
        body = f"p,precision={precision} f=1 {ts}\n".encode()
        path = f"/api/v2/write?precision={precision}"
        assert post(daemon, path, body, token_header(token))[0] == 204
    assert post(daemon, "/write?precision=h", f"p,precision=h f=1 {sec // 3600}\n".encode(),
                token_header(token))[0] == 204  # fmt: skip
    status, _, answer = post(daemon, "/api/v2/write?precision=h", b"p f=1 1\n", token_header(token))
    assert status == 400 and "precision" in answer["message"]
    before = time.time_ns()
    assert post(daemon, "/api/v2/write", b"now f=1\n", token_header(token))[0] == 204
    after = time.time_ns()
    rows = stored_rows(daemon.db, "prec-1")
    by_tag = {r.tags.get("precision"): r.ts for r in rows if r.sensor == "p/f"}
    assert by_tag == {
        "s": T0,
        "ms": T0 + 1_000_000,
        "us": T0 + 2_000,
        "ns": T0 + 3,
        "h": sec // 3600 * 3600 * S,
    }
    (now_row,) = [r for r in rows if r.sensor == "now/f"]
    assert before <= now_row.ts <= after


def test_size_limits_and_gzip_bombs_are_refused_and_store_nothing(daemon):
    token = daemon.add_device("bomb-1")
    bomb = gzip.compress(b"m f=1 1\n" + b" " * (64 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < 1024 * 1024
    status, _, answer = post(
        daemon, "/api/v2/write", bomb, {**token_header(token), "Content-Encoding": "gzip"}
    )
    assert status == 413 and answer["code"] == "request too large"
    big = b"m f=1 1\n" * (33 * 1024 * 1024 // 8)
    assert post(daemon, "/api/v2/write", big, token_header(token))[0] == 413
    status, _, _ = post(
        daemon, "/api/v2/write", b"not gzip at all",
        {**token_header(token), "Content-Encoding": "gzip"},
    )  # fmt: skip
    assert status == 400
    good = gzip.compress(f"m f=2 {T0}\n".encode())
    headers = {**token_header(token), "Content-Encoding": "gzip"}
    assert post(daemon, "/api/v2/write", good, headers)[0] == 204
    assert stored_rows(daemon.db, "bomb-1") == [Row("m/f", "gauge", "", {}, T0, 2.0)]
    assert dead_letters(daemon.db, "bomb-1") == []


def test_http_writes_leave_the_devices_tcp_sequence_alone(daemon):
    token = daemon.add_device("both-1")
    reading: list[object] = ["tcp", "gauge", T0, 1.0, None, None]
    with WireClient(*daemon.ingest) as c:
        assert isinstance(c.hello("both-1", token), wire.Welcome)
        ack = c.batch(1, [reading])
        assert isinstance(ack, wire.Ack) and ack.accepted == 1
    assert post(daemon, "/api/v2/write", f"http f=1 {T0}\n".encode(), token_header(token))[0] == 204
    with WireClient(*daemon.ingest) as c:
        welcome = c.hello("both-1", token)
        assert isinstance(welcome, wire.Welcome) and welcome.last_seq == 1
        ack = c.batch(2, [["tcp", "gauge", T0 + S, 2.0, None, None]])
        assert isinstance(ack, wire.Ack) and (ack.accepted, ack.duplicate) == (1, 0)
    assert [(r.sensor, r.ts) for r in stored_rows(daemon.db, "both-1")] == [
        ("http/f", T0),
        ("tcp", T0),
        ("tcp", T0 + S),
    ]


def test_input_counters_are_exposed(daemon):
    assert daemon.http is not None
    host, port = daemon.http
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", "/metrics/inputs")
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    assert resp.status == 200
    values = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert int(values["telemetry_input_influx_requests_total"]) > 0
    assert int(values['telemetry_input_influx_readings_total{outcome="accepted"}']) > 0
    assert int(values['telemetry_input_influx_responses_total{code="401"}']) > 0


# ---------------------------------------------------------------- in-process: 429 and 503


def _db(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "t.db"
    store.migrate(path)
    conn = store.connect(path)
    _, token = devices.add_device(conn, "dev-1", time.time_ns())
    conn.close()
    return path, token


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    # As the daemon does: open connections (e.g. lingering after a refused body) get 1 s.
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


def _head_count(path: Path) -> int:
    conn = store.connect(path, readonly=True)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {store.HEAD}").fetchone()[0])
    finally:
        conn.close()


def test_a_full_writer_queue_answers_429_with_retry_after(tmp_path):
    path, token = _db(tmp_path)
    release = threading.Event()
    entered = threading.Event()

    def maintenance(conn: sqlite3.Connection, now_ns: int) -> None:
        entered.set()
        release.wait(30)  # holds the writer: queued batches keep their credits

    async def main() -> tuple[int, str | None, int, int]:
        w = Writer(
            SQLiteStorage(path), queue_rows=10, maintenance=maintenance, maintenance_interval_ms=10
        )
        await w.start()
        app = web.Application()
        InfluxInput(w, Ingest.from_kinds(), w.storage, submit_wait_s=0.3).register(app)
        runner, url = await _serve(app)
        try:
            assert await asyncio.to_thread(entered.wait, 10)
            async with ClientSession() as s:
                headers = token_header(token)
                body = "".join(f"m f={i} {T0 + i}\n" for i in range(10))
                first = asyncio.create_task(
                    s.post(f"{url}/api/v2/write", data=body, headers=headers)
                )
                # The first body holds every credit; the second waits, then gets 429.
                deadline = time.monotonic() + 10
                while w.credits.available > 0:
                    assert time.monotonic() < deadline, "the first body never got its credits"
                    await asyncio.sleep(0.01)
                async with s.post(
                    f"{url}/api/v2/write", data=f"n f=1 {T0}\n", headers=headers
                ) as r:
                    busy, retry_after = r.status, r.headers.get("Retry-After")
                release.set()
                async with await first as r:
                    ok = r.status
                async with s.post(f"{url}/api/v2/write", data=body, headers=headers) as r:
                    again = r.status
        finally:
            release.set()
            await runner.cleanup()
            await w.close()
        return busy, retry_after, ok, again

    busy, retry_after, ok, again = asyncio.run(main())
    assert (busy, retry_after) == (429, "1")
    assert (ok, again) == (204, 204)
    assert _head_count(path) == 10  # the resend of the same body stored nothing twice


def test_a_storage_failure_answers_503_and_the_resend_stores_once(tmp_path):
    path, token = _db(tmp_path)
    full = threading.Event()
    applied = threading.Event()

    def maintenance(conn: sqlite3.Connection, now_ns: int) -> None:
        # Stands in for a full disk: the writer's connection may not grow the file.
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages if full.is_set() else 1 << 30}")
        applied.set()

    async def settle() -> None:
        for _ in range(2):  # a run already under way may have read the old state
            applied.clear()
            assert await asyncio.to_thread(applied.wait, 10)

    async def main() -> tuple[int, str | None, int]:
        w = Writer(SQLiteStorage(path), maintenance=maintenance, maintenance_interval_ms=10)
        await w.start()
        app = web.Application()
        InfluxInput(w, Ingest.from_kinds(), w.storage).register(app)
        runner, url = await _serve(app)
        body = "".join(f"m,k=v{i % 7} f={i} {T0 + i}\n" for i in range(5000))
        try:
            async with ClientSession() as s:
                headers = token_header(token)
                full.set()
                await settle()
                async with s.post(f"{url}/api/v2/write", data=body, headers=headers) as r:
                    failed, retry_after = r.status, r.headers.get("Retry-After")
                full.clear()
                await settle()
                for _ in range(2):
                    async with s.post(f"{url}/api/v2/write", data=body, headers=headers) as r:
                        ok = r.status
        finally:
            await runner.cleanup()
            await w.close()
        return failed, retry_after, ok

    failed, retry_after, ok = asyncio.run(main())
    assert (failed, retry_after, ok) == (503, "1", 204)
    assert _head_count(path) == 5000


def test_unsequenced_batches_never_move_last_seq_nor_count_as_resends(tmp_path):
    path, token = _db(tmp_path)
    ing = Ingest.from_kinds()
    armed, hold, held = threading.Event(), threading.Event(), threading.Event()

    def maintenance(conn: sqlite3.Connection, now_ns: int) -> None:
        if armed.is_set() and not hold.is_set():
            held.set()
            hold.wait(30)  # the writer waits here while both batches are queued

    def batch(seq: int, sensor: str, value: float) -> Any:
        return ing.prepare(seq, [[sensor, "gauge", T0, value, None, None]], 0)

    async def main() -> tuple[list[Any], int, int]:
        w = Writer(SQLiteStorage(path), maintenance=maintenance, maintenance_interval_ms=10)
        await w.start()
        try:
            dev = (await w.hello("dev-1", token)).auth.device
            assert dev is not None
            armed.set()
            assert await asyncio.to_thread(held.wait, 10)
            # Both in one group: the unsequenced batch after seq 5 must not pull the
            # device's committed last_seq back.
            futs = [
                await w.submit(dev.id, batch(5, "tcp", 1.0)),
                await w.submit(dev.id, batch(0, "http", 2.0)),
            ]
            hold.set()
            outs = [await f for f in futs]
            after_group = (await w.hello("dev-1", token)).last_seq
            outs.append(await (await w.submit(dev.id, batch(0, "http", 2.0))))  # resent
            outs.append(await (await w.submit(dev.id, batch(0, "late", 3.0))))  # seq 0 < 5
            outs.append(await (await w.submit(dev.id, batch(6, "tcp2", 4.0))))
            last = (await w.hello("dev-1", token)).last_seq
        finally:
            hold.set()
            await w.close()
        return outs, after_group, last

    outs, after_group, last = asyncio.run(main())
    assert [(o.accepted, o.duplicate, o.resend) for o in outs] == [
        (1, 0, False),
        (1, 0, False),
        (0, 1, False),  # deduplicated on (series, timestamp), not skipped as a resend
        (1, 0, False),
        (1, 0, False),
    ]
    assert (after_group, last) == (5, 6)
    assert _head_count(path) == 4


def test_a_body_that_trickles_in_answers_408_and_stores_nothing(tmp_path):
    path, token = _db(tmp_path)

    async def main() -> bytes:
        w = Writer(SQLiteStorage(path))
        await w.start()
        app = web.Application()
        InfluxInput(w, Ingest.from_kinds(), w.storage, body_timeout_s=0.5).register(app)
        runner, url = await _serve(app)
        host, port = url.removeprefix("http://").rsplit(":", 1)
        try:
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                b"POST /api/v2/write HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                + f"Authorization: Token {token}\r\n\r\nm f=1 ".encode()
            )  # 6 of the 100 bytes promised, then silence
            await writer.drain()
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
            writer.close()
        finally:
            await runner.cleanup()
            await w.close()
        return head

    head = asyncio.run(main())
    assert head.startswith(b"HTTP/1.1 408 ")
    assert _head_count(path) == 0


def test_writes_beyond_the_concurrency_cap_wait_then_answer_429(tmp_path):
    path, token = _db(tmp_path)

    async def main() -> tuple[int, bytes]:
        w = Writer(SQLiteStorage(path))
        await w.start()
        app = web.Application()
        InfluxInput(
            w, Ingest.from_kinds(), w.storage, max_concurrent_writes=1, submit_wait_s=0.3
        ).register(app)
        runner, url = await _serve(app)
        host, port = url.removeprefix("http://").rsplit(":", 1)
        body = f"m f=1 {T0}\n".encode()
        try:
            # The first write holds the only slot while its body is still arriving.
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                b"POST /api/v2/write HTTP/1.1\r\nHost: x\r\n"
                + f"Content-Length: {len(body)}\r\nAuthorization: Token {token}\r\n\r\n".encode()
                + body[:3]
            )
            await writer.drain()
            async with ClientSession() as s:
                deadline = time.monotonic() + 10
                while True:  # until the slow write has taken the slot
                    async with s.post(
                        f"{url}/api/v2/write", data=f"n f=1 {T0}\n", headers=token_header(token)
                    ) as r:
                        busy = r.status
                    if busy == 429 or time.monotonic() > deadline:
                        break
            writer.write(body[3:])
            await writer.drain()
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
            writer.close()
        finally:
            await runner.cleanup()
            await w.close()
        return busy, head

    busy, head = asyncio.run(main())
    assert busy == 429
    assert head.startswith(b"HTTP/1.1 204 ")
    assert _head_count(path) >= 1
