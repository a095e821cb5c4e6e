"""The dashboard's routes and the API it relies on, over real HTTP (no browser).

The collector's whole HTTP application (`collector.web.http.create_app`) is served on
127.0.0.1 port 0 in a thread over a real database file: the page's token rule, its static
files and their content types, 404s, the JSON metrics, and the event stream's throttled
summaries and Last-Event-ID resume.
"""

from __future__ import annotations

import asyncio
import json
import queue
import re
import subprocess
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from aiohttp import web

from collector.web import stream as http_stream
from collector.web.dashboard import routes
from collector.web.http import AppState, create_app
from collector.web.metrics import Metrics
from tests.collector.test_query_support import Db, S, standard_db

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-read"


@contextmanager
def serve_collector_app(
    db_path: Path, *, token: str | None = None, metrics: Metrics | None = None
) -> Iterator[str]:
    """The collector's HTTP application on 127.0.0.1:<free port> in a thread; yields its URL."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop: list[asyncio.Event] = []
    base: list[str] = []
    state = AppState(
        db_path=db_path,
        metrics=metrics or Metrics(),
        connected=lambda: {"greenhouse-1": 1},
        ready=lambda: True,
        read_token=token,
    )

    async def main() -> None:
        stop.append(asyncio.Event())
        runner = web.AppRunner(create_app(state), shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base.append(f"http://127.0.0.1:{runner.addresses[0][1]}")
        ready.set()
        try:
            await stop[0].wait()
        finally:
            await runner.cleanup()

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    assert ready.wait(10), "HTTP server did not start"
    try:
        yield base[0]
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        thread.join(10)
        loop.close()


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Db]:
    d = standard_db(tmp_path / "t.db")
    yield d
    d.close()


# ---------------------------------------------------------------- the page and its token


def test_page_is_served_without_a_token_when_none_is_configured(db: Db) -> None:
    with serve_collector_app(db.path) as base:
        status, headers, body = fetch(base + "/")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert b'<script type="module" src="/dashboard/app.js">' in body
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert headers["Cache-Control"] == "no-store"


def test_page_needs_the_read_token_when_one_is_configured(db: Db) -> None:
    with serve_collector_app(db.path, token=TOKEN) as base:
        refused = [
            fetch(base + "/"),
            fetch(base + "/?token=wrong"),
            fetch(base + "/", {"Authorization": "Bearer wrong"}),
            fetch(base + "/", {"Authorization": TOKEN}),  # not the Bearer scheme
        ]
        allowed = [
            fetch(base + f"/?token={TOKEN}&stale=5s"),
            fetch(base + "/", {"Authorization": f"Bearer {TOKEN}"}),
        ]
        api_by_query = fetch(base + f"/api/v1/series?token={TOKEN}")
    for status, headers, body in refused:
        assert status == 401
        assert headers["WWW-Authenticate"] == "Bearer"
        assert headers["Content-Type"].startswith("text/html")
        assert b'name="token"' in body  # asks for the token ...
        assert b"/dashboard/app.js" not in body  # ... and shows nothing of the dashboard
    for status, _headers, body in allowed:
        assert status == 200 and b"/dashboard/app.js" in body
    # The query-string form is for the page only: the API keeps its header rule.
    assert api_by_query[0] == 401


EXPECTED_TYPES = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "login.js": "text/javascript; charset=utf-8",
    "vendor/uplot/uPlot.esm.js": "text/javascript; charset=utf-8",
    "vendor/uplot/uPlot.min.css": "text/css; charset=utf-8",
    "vendor/uplot/LICENSE": "text/plain; charset=utf-8",
}


def test_static_files_are_served_with_their_content_type_and_without_the_token(db: Db) -> None:
    files = routes.static_files()
    assert set(EXPECTED_TYPES) <= set(files)
    with serve_collector_app(db.path, token=TOKEN) as base:
        for name, ctype in EXPECTED_TYPES.items():
            status, headers, body = fetch(base + routes.STATIC_PREFIX + name)
            assert status == 200, name
            assert headers["Content-Type"] == ctype, name
            assert headers["X-Content-Type-Options"] == "nosniff"
            assert body == (routes.STATIC_DIR / name).read_bytes(), name


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard/nope.js",
        "/dashboard/",
        "/dashboard/vendor",
        "/dashboard/vendor/uplot",
        "/dashboard/../routes.py",
        "/dashboard/%2e%2e/routes.py",
        "/dashboard/..%2froutes.py",
        "/dashboard/%2e%2e/%2e%2e/http.py",
        "/dashboard/index.html",
        "/dashboard/routes.py",
        "/index.html",
        "/favicon.ico",
    ],
)
def test_anything_else_is_404(db: Db, path: str) -> None:
    with serve_collector_app(db.path) as base:
        status, _headers, body = fetch(base + path)
    assert status == 404, (path, body[:200])
    assert b"import " not in body and b"<script" not in body


def test_every_module_import_names_a_served_file() -> None:
    """A typo in an import path would only show in a browser: check them all here."""
    files = routes.static_files()
    pattern = re.compile(r"""(?:^|\n)\s*import\s[^;]*?from\s+"(\./[^"]+)";""")
    checked = 0
    for name in files:
        if not name.endswith(".js") or name.startswith("vendor/"):
            continue
        here = Path(name).parent
        for target in pattern.findall((routes.STATIC_DIR / name).read_text()):
            resolved = (here / target).as_posix().removeprefix("./")
            assert resolved in files, f"{name} imports {target}, which is not served"
            checked += 1
    assert checked >= 15
    html = (routes.HERE / "index.html").read_text()
    for ref in re.findall(r'(?:src|href)="/dashboard/([^"]+)"', html):
        assert ref in files, ref


def test_uplot_is_vendored_with_its_licence_and_version() -> None:
    vendor = routes.STATIC_DIR / "vendor" / "uplot"
    assert "The MIT License" in (vendor / "LICENSE").read_text()
    header = (vendor / "uPlot.esm.js").read_text()[:400]
    m = re.search(r"\(v(\d+\.\d+\.\d+)\)", header)
    assert m, header
    assert f"uPlot {m.group(1)}" in (routes.STATIC_DIR / "README.md").read_text()
    assert "export { uPlot as default }" in (vendor / "uPlot.esm.js").read_text()


def test_the_wheel_takes_the_static_files() -> None:
    """hatch puts every file of a listed package in the wheel unless excluded or ignored."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wheel = cfg["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert "collector" in wheel["packages"]
    assert not wheel.get("exclude") and not wheel.get("only-include")
    names = [str(p.relative_to(ROOT)) for p in routes.STATIC_DIR.rglob("*") if p.is_file()]
    names += ["collector/web/dashboard/index.html", "collector/web/dashboard/token_required.html"]
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *names],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ignored.stdout == "", f"ignored, so left out of the wheel: {ignored.stdout}"


# ---------------------------------------------------------------- the JSON it reads


def test_metrics_json_carries_the_metrics_objects_numbers_under_the_token(db: Db) -> None:
    metrics = Metrics(accepted=120, rejected=3, connections_open=2, connections_total=5)
    metrics.commit_seconds.observe(0.002)
    metrics.commit_seconds.observe(0.004)
    metrics.queue_depth = lambda: 7
    with serve_collector_app(db.path, token=TOKEN, metrics=metrics) as base:
        assert fetch(base + "/api/v1/metrics")[0] == 401
        status, _h, body = fetch(base + "/api/v1/metrics", {"Authorization": f"Bearer {TOKEN}"})
        prom = fetch(base + "/metrics")[2].decode()
    assert status == 200
    m = json.loads(body)
    assert m["readings"] == {"accepted": 120, "rejected": 3, "duplicate": 0}
    assert m["connections"]["open"] == 2 and m["connections"]["total"] == 5
    assert m["writer_queue_depth"] == 7
    assert m["commit_seconds"]["count"] == 2
    assert m["commit_seconds"]["sum"] == pytest.approx(0.006)
    assert sum(n for _le, n in m["commit_seconds"]["buckets"]) == 2
    storage = m["storage"]
    assert f"telemetry_head_rows {storage['head_rows']}\n" in prom
    assert storage["head_rows"] == db.count_head() > 0
    assert storage["db_bytes"] > 0
    # standard_db's readings are from 2025: the head's oldest is that far behind now.
    assert m["compaction_lag_s"] == pytest.approx((m["now_ns"] - storage["head_oldest_ns"]) / 1e9)
    assert m["compaction_lag_s"] > 86_400


def test_devices_carry_the_collectors_clock(db: Db) -> None:
    with serve_collector_app(db.path) as base:
        before = time.time_ns()
        body = json.loads(fetch(base + "/api/v1/devices")[2])
    assert before <= body["now_ns"] <= time.time_ns()
    assert {d["device"] for d in body["devices"]} >= {"greenhouse-1", "pump-1"}


# ---------------------------------------------------------------- the stream it follows


class SseReader(threading.Thread):
    """Reads an event stream into a queue of (event, id, data) until the server closes it."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(daemon=True)
        self.req = urllib.request.Request(url, headers=headers or {})
        self.events: queue.Queue[tuple[str, str, str]] = queue.Queue()
        self.ready = threading.Event()

    def run(self) -> None:
        event, ident, data = "message", "", ""
        with urllib.request.urlopen(self.req, timeout=20) as resp:
            for raw in resp:
                line = raw.decode().rstrip("\n")
                if line == ": ready":
                    self.ready.set()
                elif line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("id: "):
                    ident = line[4:]
                elif line.startswith("data: "):
                    data = line[6:]
                elif line == "" and data:
                    self.events.put((event, ident, data))
                    event, ident, data = "message", "", ""

    def next(self, within: float = 10.0) -> tuple[str, str, str]:
        return self.events.get(timeout=within)


def test_throttled_stream_sends_one_summary_per_interval_per_bucket(db: Db) -> None:
    now = time.time_ns()
    t0 = now - now % (60 * S)  # a minute boundary
    with serve_collector_app(db.path) as base:
        reader = SseReader(base + "/api/v1/stream?device=pump-*&throttle=500ms&every=1m")
        reader.start()
        assert reader.ready.wait(10)
        # One commit of readings in two buckets, one of another device (filtered out).
        db.add("pump-1", "flow", "gauge", [(t0 - 2 * S, 1.0), (t0 + S, 2.0), (t0 + 2 * S, 6.0)])
        db.add("greenhouse-1", "humidity", "humidity", [(t0, 40.0)])
        event, ident, data = reader.next()
        assert event == "summary"
        body = json.loads(data)
        assert body["readings"] == 3 and body["every_ns"] == 60 * S
        buckets = {(b["sensor"], b["ts_ns"]): b for b in body["buckets"]}
        assert set(buckets) == {("flow", t0 - 60 * S), ("flow", t0)}
        late = buckets[("flow", t0)]
        assert (late["count"], late["sum"], late["min"], late["max"]) == (2, 8.0, 2.0, 6.0)
        assert (late["last"], late["last_ts_ns"]) == (6.0, t0 + 2 * S)
        assert late["device"] == "pump-1" and late["kind"] == "gauge"
        sid = late["series_id"]
        assert ident == f"{t0 + 2 * S}.{sid}"
        # Many commits within one interval come as one event.
        for k in range(5):
            db.add("pump-1", "flow", "gauge", [(t0 + (10 + k) * S, 1.0)])
        got = 0
        while got < 5:
            event, _ident, data = reader.next()
            got += json.loads(data)["readings"]
        assert got == 5


def test_stream_resumes_after_last_event_id(db: Db) -> None:
    now = time.time_ns()
    db.add("pump-1", "flow", "gauge", [(now - 3 * S, 1.0), (now - 2 * S, 2.0), (now - S, 3.0)])
    with serve_collector_app(db.path) as base:
        # A raw stream resumed after the first of those readings sends the two after it.
        probe = SseReader(base + "/api/v1/stream?device=pump-1&sensor=flow")
        probe.start()
        assert probe.ready.wait(10)
        db.add("pump-1", "flow", "gauge", [(now, 4.0)])
        sid = json.loads(probe.next()[2])["series_id"]
        reader = SseReader(
            base + "/api/v1/stream?device=pump-1", {"Last-Event-ID": f"{now - 3 * S}.{sid}"}
        )
        reader.start()
        values = [json.loads(reader.next()[2])["value"] for _ in range(3)]
        assert values == [2.0, 3.0, 4.0]
        # The dashboard's cut-off form: everything from a time on, as one summary.
        summary = SseReader(
            base + "/api/v1/stream?device=pump-1&throttle=1s",
            {"Last-Event-ID": f"{now - 2 * S}.0"},
        )
        summary.start()
        event, _ident, data = summary.next()
        assert event == "summary"
        (b,) = json.loads(data)["buckets"]
        assert (b["count"], b["sum"], b["last"]) == (3, 9.0, 4.0)


def test_resume_reaches_back_at_most_the_limit(db: Db) -> None:
    now = time.time_ns()
    old = now - http_stream.STREAM_RESUME_MAX_NS - 30 * S
    db.add("pump-1", "flow", "gauge", [(old, 1.0), (now - S, 2.0)])
    with serve_collector_app(db.path) as base:
        reader = SseReader(base + "/api/v1/stream?device=pump-1", {"Last-Event-ID": "0.0"})
        reader.start()
        assert json.loads(reader.next()[2])["value"] == 2.0
        with pytest.raises(queue.Empty):
            reader.next(within=0.5)


@pytest.mark.parametrize(
    ("query", "headers", "param"),
    [
        ("throttle=10ms", {}, "throttle"),
        ("throttle=2m", {}, "throttle"),
        ("throttle=soon", {}, "throttle"),
        ("every=1m", {}, "every"),
        ("throttle=1s&every=0s", {}, "every"),
        ("", {"Last-Event-ID": "yesterday"}, "Last-Event-ID"),
    ],
)
def test_stream_parameters_are_checked(
    db: Db, query: str, headers: dict[str, str], param: str
) -> None:
    with serve_collector_app(db.path) as base:
        status, _h, body = fetch(base + "/api/v1/stream?" + query, headers)
    assert status == 400
    assert json.loads(body)["param"] == param


def test_summaries_sum_numbers_and_keep_the_last_of_anything() -> None:
    rows: list[dict[str, object]] = [
        {"series_id": 1, "device": "d", "sensor": "s", "field": "", "kind": "state",
         "unit": "", "ts_ns": 5, "value": True},
        {"series_id": 2, "device": "d", "sensor": "t", "field": "", "kind": "text",
         "unit": "", "ts_ns": 6, "value": "hello"},
        {"series_id": 1, "device": "d", "sensor": "s", "field": "", "kind": "state",
         "unit": "", "ts_ns": 7, "value": False},
    ]  # fmt: skip
    out = {b["series_id"]: b for b in http_stream.summarise(rows, None)}
    assert (out[1]["count"], out[1]["sum"], out[1]["min"], out[1]["max"]) == (2, 1.0, 0.0, 1.0)
    assert (out[1]["last"], out[1]["ts_ns"], out[1]["last_ts_ns"]) == (False, 5, 7)
    assert (out[2]["count"], out[2]["sum"], out[2]["last"]) == (1, None, "hello")
