"""The dashboard in a real browser (Chromium driven by Playwright) against a real collector.

One collector subprocess with a read token and three real agent processes streaming
simulated readings (one sends invalid readings on purpose), plus a raw protocol client that
sends one valid and one invalid reading. Checks go through the page: rows and their
data-status, each chart's data-points, the rejected-readings table, the header's stream
state; never pixels. Every page must log no console error. Screenshots of the fleet and a
device page are saved in the test's tmp_path; with DASHBOARD_DOCS_SCREENSHOT=1 the fleet one
is also copied to docs/dashboard.png.

Needs `pip install playwright` and Debian's Chromium (`apt-get install chromium`); skips
with one line without them, and fails instead when CI=true.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from schemas import wire
from tests.collector.wireclient import CollectorProcess, WireClient
from tests.reliability.harness import Agent, add_devices

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "browser-read-token"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Short status thresholds so a stopped device goes stale, then offline, within seconds.
STALE, OFFLINE = "3s", "6s"
INPUTS = {
    "greenhouse-1": (
        '[[inputs.simulated]]\nnames = ["air-temp", "soil-temp"]\nkind = "temperature"\n'
        'unit = "C"\ninterval = "200ms"\nwaveform = "sine"\nbase = 21.0\namplitude = 4.0\n'
        'period = "30s"\nseed = 1\n'
    ),
    "tracker-1": (
        '[[inputs.simulated]]\nname = "cargo-temp"\nkind = "temperature"\nunit = "C"\n'
        'interval = "200ms"\nwaveform = "random_walk"\nbase = 4.0\namplitude = 0.2\n'
        "invalid_every = 5\nseed = 2\n"
    ),
    "pump-1": (
        '[[inputs.simulated]]\nname = "pressure"\nkind = "pressure"\nunit = "hPa"\n'
        'interval = "200ms"\nseed = 3\n'
    ),
}


def _chromium() -> str | None:
    path = os.environ.get("DASHBOARD_CHROMIUM") or "/usr/bin/chromium"
    return path if Path(path).exists() else shutil.which("chromium")


def _missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return (
            "browser tests need Playwright: pip install playwright (and apt-get install chromium)"
        )
    if _chromium() is None:
        return "browser tests need Chromium: apt-get install chromium (or set DASHBOARD_CHROMIUM)"
    return None


# One line for the whole module when a part is missing; under CI each test fails instead
# (in its fixture, so the rest of the suite still runs).
MISSING = _missing()
if MISSING is not None and os.environ.get("CI") != "true":
    pytest.skip(MISSING, allow_module_level=True)


@dataclass
class Site:
    """The running system: collector, agents, browser, and where the dashboard lives."""

    base: str
    collector: CollectorProcess
    agents: dict[str, Agent]
    browser: Browser
    tmp: Path
    pages: list[Page] = field(default_factory=list)

    def url(self, path: str = "/", **query: str) -> str:
        q = {"token": TOKEN, "stale": STALE, "offline": OFFLINE, **query}
        return self.base + path + "?" + "&".join(f"{k}={v}" for k, v in q.items())


@dataclass
class Console:
    errors: list[str] = field(default_factory=list)

    def __call__(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            self.errors.append(f"{msg.text} at {msg.location}")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    if MISSING is not None:
        pytest.fail(MISSING, pytrace=False)
    chromium = _chromium()
    assert chromium is not None
    from playwright.sync_api import sync_playwright

    tmp = tmp_path_factory.mktemp("dashboard")
    db = tmp / "t.db"
    tokens = add_devices(db, [*INPUTS, "bench-1"])
    with CollectorProcess(db, env={"TELEMETRY_HTTP_TOKEN": TOKEN}) as collector:
        agents = {}
        for name, inputs in INPUTS.items():
            agent = Agent(tmp, name, tokens[name])
            agent.configure(collector.ingest[1], inputs)
            agents[name] = agent.start()
        _send_one_good_one_bad(collector.ingest[1], tokens["bench-1"])
        assert collector.http is not None
        base = f"http://{collector.http[0]}:{collector.http[1]}"
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
                try:
                    yield Site(base, collector, agents, browser, tmp)
                finally:
                    browser.close()
        finally:
            for agent in agents.values():
                agent.stop()


def _send_one_good_one_bad(port: int, token: str) -> None:
    """bench-1 sends a valid reading and one of a kind the collector does not know."""
    now = time.time_ns()
    with WireClient("127.0.0.1", port) as c:
        assert isinstance(c.hello("bench-1", token), wire.Welcome)
        ack = c.batch(
            1,
            [
                ["flow", "temperature", now, 21.5, "C", None],
                ["flow", "flowrate", now, 12.5, "l/min", None],
            ],
        )
        assert isinstance(ack, wire.Ack) and len(ack.rejects) == 1, ack


@pytest.fixture
def page(site: Site) -> Iterator[tuple[Page, Console]]:
    context = site.browser.new_context(viewport={"width": 1100, "height": 760})
    p = context.new_page()
    console = Console()
    p.on("console", console)
    p.on("pageerror", lambda exc: console.errors.append(f"uncaught: {exc}"))
    p.set_default_timeout(15_000)
    yield p, console
    context.close()


def wait_until(pred: Callable[[], Any], what: str, within: float = 15.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {what}")
        time.sleep(0.1)


def points(p: Page, selector: str) -> int:
    value = p.get_attribute(selector, "data-points")
    return int(value or 0)


def number(p: Page, selector: str) -> float:
    """A figure shown in the page (thousands separators allowed); -1 while it shows none."""
    text = p.inner_text(selector).replace(",", "")
    return float(text) if re.fullmatch(r"-?\d+(\.\d+)?", text) else -1.0


def test_fleet_lists_every_device_with_status_and_sparklines(
    site: Site, page: tuple[Page, Console]
) -> None:
    p, console = page
    resp = p.goto(site.url())
    assert resp is not None and resp.status == 200
    # The token went to sessionStorage and left the address bar.
    assert "token" not in p.url and "stale=3s" in p.url
    for name in INPUTS:
        p.wait_for_selector(f'tr[data-device="{name}"][data-status="live"]')
    p.wait_for_selector('tr[data-device="bench-1"]')
    p.wait_for_selector('#stream-state[data-state="live"]')
    # Sparklines drawn from history plus the stream; readings/s shown from the stream.
    wait_until(
        lambda: all(points(p, f'tr[data-device="{n}"] .spark') >= 1 for n in INPUTS),
        "a sparkline point per streaming device",
    )
    assert p.locator('tr[data-device="greenhouse-1"] .spark canvas').count() == 1
    wait_until(
        lambda: number(p, 'tr[data-device="greenhouse-1"] td:nth-child(4)') > 0,
        "a readings/s figure",
    )
    main = p.inner_text('tr[data-device="pump-1"] .main-label')
    assert main.endswith(" hPa"), main
    wait_until(
        lambda: number(p, 'tr[data-device="tracker-1"] td:nth-child(5)') > 0,
        "tracker-1's rejects",
    )
    # Collector health from /api/v1/metrics: rates need two polls.
    wait_until(lambda: number(p, '[data-metric="ingest"] .card-value') > 0, "an ingest rate")
    assert number(p, '[data-metric="connections"] .card-value') >= 3
    assert number(p, '[data-metric="head"] .card-value') > 0
    # Filter and sort.
    p.fill("#fleet-filter", "green")
    wait_until(lambda: p.locator("table.fleet tbody tr:visible").count() == 1, "the filter")
    p.fill("#fleet-filter", "")
    p.click('th[data-sort="name"]')  # already by name: now descending
    wait_until(
        lambda: p.locator("table.fleet tbody tr").first.get_attribute("data-device") == "tracker-1",
        "descending order",
    )
    p.screenshot(path=str(site.tmp / "fleet-first.png"), full_page=True)
    assert console.errors == []


def test_device_page_charts_grow_and_show_latest_values(
    site: Site, page: tuple[Page, Console]
) -> None:
    p, console = page
    p.goto(site.url())
    p.wait_for_selector('tr[data-device="greenhouse-1"]')
    p.click('tr[data-device="greenhouse-1"] a')
    p.wait_for_selector('body[data-page="device"]')
    # Smaller buckets through the controls: the page reloads its charts.
    p.select_option("#device-range", "5m")
    p.select_option("#device-every", "1s")
    assert "every=1s" in p.url and "range=5m" in p.url
    chart = '.chart[data-series="air-temp"]'
    p.wait_for_selector(chart + " canvas")
    first = wait_until(lambda: points(p, chart), "air-temp's first points")
    wait_until(lambda: points(p, chart) >= first + 3, "the chart to grow", within=20)
    assert points(p, '.chart[data-series="soil-temp"]') > 0
    width = p.eval_on_selector(chart + " canvas", "c => c.width")
    assert width > 100
    value = p.inner_text('#latest tr[data-series="air-temp"] .value')
    assert re.fullmatch(r"-?[\d.]+ C", value), value
    assert p.inner_text("#device-status") == "live"
    p.screenshot(path=str(site.tmp / "device.png"), full_page=True)
    assert console.errors == []


def test_device_page_shows_a_rejected_reading_with_its_reason(
    site: Site, page: tuple[Page, Console]
) -> None:
    p, console = page
    p.goto(site.url())
    p.wait_for_selector('tr[data-device="bench-1"]')
    p.goto(site.base + "/#/device/bench-1")  # the page: token from this tab's sessionStorage
    row = p.wait_for_selector('#rejected tr[data-code="unknown_kind"]')
    assert row is not None
    text = row.inner_text()
    assert "flowrate" in text and "kind" in text
    assert p.inner_text('#latest tr[data-series="flow"] .value') == "21.5 C"
    assert p.locator("#rejected tbody tr").count() == 1
    # The reload without ?token= was answered 401 once and retried with the stored token.
    errors = [e for e in console.errors if "status of 401" not in e]
    assert errors == []


def test_a_stopped_device_turns_stale_then_offline(site: Site, page: tuple[Page, Console]) -> None:
    p, console = page
    p.goto(site.url())
    row = 'tr[data-device="pump-1"]'
    p.wait_for_selector(row + '[data-status="live"]')
    site.agents["pump-1"].stop()
    t0 = time.monotonic()
    p.wait_for_selector(row + '[data-status="stale"]')
    stale_after = time.monotonic() - t0
    p.wait_for_selector(row + '[data-status="offline"]')
    offline_after = time.monotonic() - t0
    assert 1.0 < stale_after < offline_after, (stale_after, offline_after)
    assert offline_after < 15
    # The others keep streaming.
    p.wait_for_selector('tr[data-device="greenhouse-1"][data-status="live"]')
    # By now the sparklines span a few buckets: the fleet's screenshot (every status shows).
    wait_until(lambda: points(p, 'tr[data-device="greenhouse-1"] .spark') >= 2, "sparklines")
    shot = site.tmp / "fleet.png"
    p.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("DASHBOARD_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "dashboard.png")
    assert console.errors == []


def test_without_the_token_the_page_is_refused(site: Site, page: tuple[Page, Console]) -> None:
    p, _console = page
    resp = p.goto(site.base + "/")
    assert resp is not None and resp.status == 401
    assert p.locator("#login-form").is_visible()
    assert p.locator("#main").count() == 0
    for path in ("/api/v1/devices", "/api/v1/metrics", "/api/v1/stream"):
        assert p.request.get(site.base + path).status == 401, path
    assert p.request.get(site.base + "/?token=wrong").status == 401
    # Entering the token opens the dashboard.
    p.fill("#token", TOKEN)
    p.click("#login-form button")
    p.wait_for_selector('tr[data-device="greenhouse-1"]')
    assert "token" not in p.url


def test_readable_on_a_phone_sized_screen(site: Site, page: tuple[Page, Console]) -> None:
    p, console = page
    p.set_viewport_size({"width": 390, "height": 800})
    p.goto(site.url())
    p.wait_for_selector('tr[data-device="greenhouse-1"][data-status="live"]')
    wait_until(lambda: points(p, 'tr[data-device="greenhouse-1"] .spark') >= 1, "a sparkline")
    overflow = "document.documentElement.scrollWidth - window.innerWidth"
    assert p.evaluate(overflow) <= 0
    p.goto(site.url("/") + "#/device/greenhouse-1")
    p.wait_for_selector('.chart[data-series="air-temp"] canvas')
    assert p.evaluate(overflow) <= 0
    chart_width = p.eval_on_selector('.chart[data-series="air-temp"]', "e => e.clientWidth")
    assert 250 < chart_width <= 390
    p.screenshot(path=str(site.tmp / "phone.png"), full_page=True)
    assert console.errors == []


def test_stream_reconnects_after_a_collector_restart_with_last_event_id(
    site: Site, page: tuple[Page, Console]
) -> None:
    p, console = page
    p.goto(site.url() + "#/device/greenhouse-1?range=5m&every=1s")
    chart = '.chart[data-series="air-temp"]'
    wait_until(lambda: points(p, chart) >= 2, "air-temp's chart")
    resumed: list[str] = []
    p.on(
        "request",
        lambda r: (
            resumed.append(r.headers.get("last-event-id", ""))
            if "/api/v1/stream" in r.url
            else None
        ),
    )
    c = site.collector
    assert c.http is not None
    http, ingest = c.http, c.ingest
    assert c.terminate() == 0
    p.wait_for_selector('#stream-state[data-state="reconnecting"]')
    c.args = ["--http", f"{http[0]}:{http[1]}", "--listen", f"{ingest[0]}:{ingest[1]}"]
    c.start()
    p.wait_for_selector('#stream-state[data-state="live"]', timeout=20_000)
    assert resumed and all(re.fullmatch(r"\d+\.\d+", h) for h in resumed), resumed
    before = points(p, chart)
    wait_until(lambda: points(p, chart) >= before + 2, "the chart to go on growing", within=20)
    # While the collector was down the page's requests failed; nothing else went wrong.
    errors = [e for e in console.errors if "ERR_CONNECTION_REFUSED" not in e]
    assert errors == []
