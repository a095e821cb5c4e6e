"""The JavaScript client (clients/js) against the real collector.

Runs the client's own unit tests (`node --test`: codec and shared vectors, and the client
against a scriptable collector), then drives it against `python -m collector collector`
subprocesses on 127.0.0.1 with real SQLite files, and reads back what was stored:

- valid readings are stored exactly once; invalid ones are rejected with the same codes, paths
  and messages as the same bytes sent through `schemas.wire` (the Python codec);
- a batch whose ACK is lost is resent after the reconnect and ACKed as duplicate;
- after a collector restart, and after a link cut in the middle of a batch (fault proxy), the
  client reconnects and resumes: every reading stored once;
- `clients/js/run-example` works as clients/js/README.md says, over TLS too, and fails with one
  line when the token is wrong.

Needs Node.js >= 20 and npm (skipped otherwise, failed when CI=true). `npm ci` runs only when
clients/js/node_modules is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import msgpack
import pytest
from click.testing import CliRunner

from collector.cli import cli
from collector.storage.sqlite import scan, store
from schemas import wire
from tests.collector.wireclient import CollectorProcess, WireClient
from tests.reliability.faultproxy import FaultProxy

ROOT = Path(__file__).resolve().parents[2]
JS = ROOT / "clients" / "js"
NODE_MAJOR_MIN = 20
DEADLINE_S = 60.0
HOW_TO_ENABLE = "install Node.js >= 20 with npm (e.g. the nodesource nodejs package)"

# What the collector answers for each invalid reading of the driver's `mixed` scenario.
EXPECTED_REJECTS = {
    7: ("out_of_range", "value"),  # humidity 104
    8: ("unknown_kind", "kind"),  # kind "smell"
    9: ("out_of_range", "value"),  # counter -1
    10: ("wrong_type", "value"),  # counter 2.5
    11: ("missing_field", "value.lon"),  # gps without lon
    12: ("bad_sensor", "sensor"),  # "my sensor"
    13: ("bad_unit", "unit"),  # temperature in "degC"
    14: ("bad_tags", "tags.k"),  # tag value 1
    15: ("too_long", "value"),  # text of 1025 characters
    16: ("bad_timestamp", "ts"),  # ts -1
    17: ("wrong_type", "value"),  # state 1
}
MIXED_VALID = 7


def _missing_tools() -> str | None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return "node or npm not found"
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout
    m = re.match(r"v(\d+)\.", out.strip())
    if m is None or int(m.group(1)) < NODE_MAJOR_MIN:
        return f"node {out.strip() or '?'} is older than {NODE_MAJOR_MIN}"
    return None


@pytest.fixture(scope="module")
def js() -> Path:
    """clients/js with its dependencies installed; skips (fails under CI) without node."""
    missing = _missing_tools()
    if missing is not None:
        message = f"JavaScript client tests need Node.js: {missing}; {HOW_TO_ENABLE}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    if not (JS / "node_modules").is_dir():
        subprocess.run(
            ["npm", "ci", "--prefer-offline", "--no-audit", "--no-fund"],
            cwd=JS,
            check=True,
            capture_output=True,
            timeout=300,
        )
    return JS


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[CollectorProcess]:
    with CollectorProcess(tmp_path / "t.db") as d:
        yield d


def _env(daemon: CollectorProcess, device: str, token: str, **more: str) -> dict[str, str]:
    host, port = daemon.ingest
    return {
        **os.environ,
        "TELEMETRY_ADDRESS": f"{host}:{port}",
        "TELEMETRY_DEVICE": device,
        "TELEMETRY_TOKEN": token,
        **more,
    }


def _driver(js: Path, env: dict[str, str], *args: str) -> dict[str, object]:
    res = subprocess.run(
        ["node", str(js / "e2e" / "driver.js"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    assert res.returncode == 0, res.stderr
    out: dict[str, object] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def _stored(db: Path, device: str) -> dict[tuple[str, str, str], list[tuple[int, scan.Value]]]:
    """One device's stored readings: (sensor, field, kind) -> [(ts, value)] in time order."""
    conn = store.connect(db, readonly=True)
    try:
        ids = {
            int(sid): (str(sensor), str(field), str(kind))
            for sid, sensor, field, kind in conn.execute(
                "SELECT s.id, s.sensor, s.field, s.kind FROM series s "
                "JOIN devices d ON d.id = s.device_id WHERE d.name = ?",
                (device,),
            )
        }
        out: dict[tuple[str, str, str], list[tuple[int, scan.Value]]] = {
            k: [] for k in ids.values()
        }
        for sid, ts, value in scan.read_range(conn, sorted(ids), None, None):
            out[ids[sid]].append((ts, value))
        return out
    finally:
        conn.close()


def _counter_values(db: Path, device: str, sensor: str) -> list[scan.Value]:
    return [v for _, v in _stored(db, device).get((sensor, "", "counter"), [])]


def _wait_for(pred: Callable[[], bool], what: str, within: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + within
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class _Lines:
    """A subprocess's stdout lines, read by a thread so every wait can have a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._q: queue.Queue[str] = queue.Queue()
        self._t = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._t.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._q.put(line)
        self._q.put("")

    def next_json(self, within: float = DEADLINE_S) -> dict[str, object]:
        line = self._q.get(timeout=within)
        assert line, "the driver ended without output"
        out: dict[str, object] = json.loads(line)
        return out

    def close(self) -> None:
        self._t.join(DEADLINE_S)
        self._stream.close()


def test_node_unit_tests_pass(js: Path) -> None:
    res = subprocess.run(
        ["node", "--test", "--test-timeout=60000"],
        cwd=js,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    passed = re.search(r"^# pass (\d+)$", res.stdout, re.M)
    failed = re.search(r"^# fail (\d+)$", res.stdout, re.M)
    assert passed is not None and failed is not None, res.stdout[-2000:]
    # the vectors alone are well over a hundred checks
    assert int(passed.group(1)) >= 150 and int(failed.group(1)) == 0


def test_rejects_match_python_and_valid_readings_are_stored_once(
    js: Path, daemon: CollectorProcess
) -> None:
    token_js = daemon.add_device("dev-js")
    token_py = daemon.add_device("dev-py")
    out = _driver(js, _env(daemon, "dev-js", token_js), "mixed")
    result = out["result"]
    assert isinstance(result, dict)
    js_rejects = [(r["index"], r["code"], r["path"], r["message"]) for r in result["rejects"]]
    assert {i: (c, p) for i, c, p, _ in js_rejects} == EXPECTED_REJECTS
    assert result["acked"] == MIXED_VALID
    stats = out["stats"]
    assert isinstance(stats, dict)
    assert (stats["accepted"], stats["duplicate"], stats["rejected"]) == (MIXED_VALID, 0, 11)

    # The same readings, byte for byte, through the Python codec as another device.
    hexes = out["hex"]
    assert isinstance(hexes, list)
    readings = [msgpack.unpackb(bytes.fromhex(h), raw=False) for h in hexes]
    with WireClient(*daemon.ingest) as c:
        assert isinstance(c.hello("dev-py", token_py), wire.Welcome)
        ack = c.batch(1, readings)
    assert isinstance(ack, wire.Ack)
    assert [(r.index, r.code, r.path, r.message) for r in ack.rejects] == js_rejects
    assert ack.accepted == MIXED_VALID

    stored_js = _stored(daemon.db, "dev-js")
    assert stored_js == _stored(daemon.db, "dev-py")
    assert stored_js[("e2e/humidity", "", "humidity")] == [(1_704_067_200_000_000_000, 55.0)]
    assert stored_js[("e2e/packets", "", "counter")] == [(1_704_067_200_000_000_000, 42)]
    assert sum(len(v) for v in stored_js.values()) >= MIXED_VALID

    # Sent again by a new client instance (a new stream): every valid reading is a duplicate.
    again = _driver(js, _env(daemon, "dev-js", token_js), "mixed")
    assert isinstance(again["stats"], dict)
    assert (again["stats"]["accepted"], again["stats"]["duplicate"]) == (0, MIXED_VALID)
    assert _stored(daemon.db, "dev-js") == stored_js


def test_batch_with_lost_ack_is_resent_and_acked_as_duplicate(
    js: Path, daemon: CollectorProcess
) -> None:
    token = daemon.add_device("dev-js")
    n = 300
    out = _driver(js, _env(daemon, "dev-js", token), "resend", str(n))
    assert out["proxy"] == {"connections": 2, "acksSwallowed": 1}
    stats = out["stats"]
    assert isinstance(stats, dict)
    # the first ACK never arrived; the resend of the same seq was all duplicate
    assert (stats["batches"], stats["reconnects"]) == (2, 1)
    assert (stats["accepted"], stats["duplicate"], stats["rejected"]) == (0, n, 0)
    assert out["result"] == {"count": n, "acked": n, "rejects": [], "dropped": 0}
    assert _counter_values(daemon.db, "dev-js", "e2e/resend") == list(range(1, n + 1))


@contextlib.contextmanager
def _stream(
    js: Path, env: dict[str, str], n: int
) -> Iterator[tuple[subprocess.Popen[str], _Lines]]:
    """The driver's `stream` scenario as a subprocess; killed if the test fails midway."""
    proc = subprocess.Popen(
        ["node", str(js / "e2e" / "driver.js"), "stream", str(n)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        yield proc, _Lines(proc.stdout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None and not f.closed:
                f.close()


def _finish(proc: subprocess.Popen[str], lines: _Lines, n: int) -> dict[str, object]:
    done = lines.next_json()
    rc = proc.wait(DEADLINE_S)
    lines.close()
    assert proc.stderr is not None
    assert rc == 0, proc.stderr.read()
    assert done["phase"] == "done"
    assert done["result"] == {"count": n - n // 2, "acked": n - n // 2, "rejects": [], "dropped": 0}
    stats = done["stats"]
    assert isinstance(stats, dict)
    return stats


def test_resumes_after_a_collector_restart(js: Path, tmp_path: Path) -> None:
    n = 4000
    first = CollectorProcess(tmp_path / "t.db").start()
    try:
        token = first.add_device("dev-js")
        host, port = first.ingest
        with _stream(js, _env(first, "dev-js", token), n) as (proc, lines):
            assert lines.next_json()["phase"] == "half"
            first.terminate()
            assert proc.stdin is not None
            proc.stdin.write("go\n")  # the second half waits while the collector is away
            proc.stdin.flush()
            with CollectorProcess(tmp_path / "t.db", "--listen", f"{host}:{port}"):
                stats = _finish(proc, lines, n)
    finally:
        first.kill()  # a no-op once terminated
    assert isinstance(stats["reconnects"], int) and stats["reconnects"] >= 1
    assert stats["accepted"] == n and stats["duplicate"] == 0
    assert _counter_values(tmp_path / "t.db", "dev-js", "e2e/stream") == list(range(1, n + 1))


def test_resumes_after_the_link_is_cut_mid_batch(js: Path, daemon: CollectorProcess) -> None:
    n = 4000
    token = daemon.add_device("dev-js")
    proxy = FaultProxy(*daemon.ingest).start()
    try:
        env = _env(daemon, "dev-js", token, TELEMETRY_ADDRESS=f"127.0.0.1:{proxy.port}")
        with _stream(js, env, n) as (proc, lines):
            assert lines.next_json()["phase"] == "half"
            # A batch of 100 counters is ~4 KB: the next one is cut after 1500 of its bytes.
            proxy.set_mode("cut", cut_after=1500)
            _wait_for(lambda: proxy.mode == "cut", "the proxy to cut")
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
            _wait_for(lambda: proxy.stats.cuts >= 1, "a cut")
            proxy.set_mode("pass")
            stats = _finish(proc, lines, n)
    finally:
        proxy.stop()
    assert isinstance(stats["reconnects"], int) and stats["reconnects"] >= 1
    assert _counter_values(daemon.db, "dev-js", "e2e/stream") == list(range(1, n + 1))


def _run_example(script: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(script)], env=env, capture_output=True, text=True, timeout=DEADLINE_S * 3
    )


def test_run_example_as_the_readme_says(js: Path, daemon: CollectorProcess, tmp_path: Path) -> None:
    token = daemon.add_device("dev-js")
    # A copy without node_modules: run-example installs the locked dependencies first.
    copy = tmp_path / "js"
    shutil.copytree(js, copy, ignore=shutil.ignore_patterns("node_modules"))
    res = _run_example(copy / "run-example", _env(daemon, "dev-js", token, TELEMETRY_COUNT="1000"))
    assert res.returncode == 0, res.stderr
    assert res.stdout == "sent 1000 readings: 1000 accepted, 0 duplicate, 0 rejected\n"
    assert (copy / "node_modules" / "@msgpack" / "msgpack").is_dir()
    assert _counter_values(daemon.db, "dev-js", "example/counter") == list(range(1, 1001))

    bad = _run_example(js / "run-example", _env(daemon, "dev-js", "wrong-token"))
    assert bad.returncode != 0
    assert bad.stdout == ""
    assert len(bad.stderr.splitlines()) == 1 and "auth_failed" in bad.stderr, bad.stderr


def test_run_example_over_tls(js: Path, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    runner = CliRunner()
    for args in (
        ["certs", "ca", "--dir", str(pki)],
        ["certs", "collector", "--dir", str(pki), "--host", "127.0.0.1"],
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
    tls = ("--tls-cert", str(pki / "collector.pem"), "--tls-key", str(pki / "collector.key"))
    with CollectorProcess(tmp_path / "t.db", *tls) as d:
        token = d.add_device("dev-tls")
        env = _env(d, "dev-tls", token, TELEMETRY_COUNT="200", TELEMETRY_CA=str(pki / "ca.pem"))
        res = _run_example(js / "run-example", env)
        assert res.returncode == 0, res.stderr
        assert res.stdout == "sent 200 readings: 200 accepted, 0 duplicate, 0 rejected\n"
        # without the CA the collector's certificate is not trusted: nothing is sent
        env.pop("TELEMETRY_CA")
        res = _run_example(
            js / "run-example", {**env, "TELEMETRY_TLS": "1", "TELEMETRY_TIMEOUT_S": "2"}
        )
        assert res.returncode == 1 and "certificate" in res.stderr, res.stderr
    assert _counter_values(tmp_path / "t.db", "dev-tls", "example/counter") == list(range(1, 201))
